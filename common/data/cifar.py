"""CIFAR-10/100 from their official python-pickle folders (`cifar-10-batches-py`, `cifar-100-python`).

The batch files are pickles, and a pickle can run code or ask for any amount of memory. `read_cifar_batch`
therefore never unpickles blindly: it first walks the opcodes (`pickletools.genops`, which executes nothing)
and rejects memo indices no real file uses (one opcode can otherwise make the unpickler allocate gigabytes),
then unpickles with an allow-list of globals (numpy's array, buffer and scalar reconstructors, latin-1 bytes), and finally
checks the structure: a dict with uint8 `data` of shape (N, 3072) and N integer labels. Anything else, including
random bytes, is a `BadFileError` naming the file.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import pickletools

import numpy as np

from common.readers import BadFileError

from .checks import check_labels

_LAYOUT = {
    10: {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "labels": b"labels",
         "folder": "cifar-10-batches-py"},
    100: {"train": ["train"], "test": ["test"], "labels": b"fine_labels", "folder": "cifar-100-python"},
}
_PIXELS = 32 * 32 * 3
_MEMO_OPS = ("PUT", "BINPUT", "LONG_BINPUT")


def _reconstruct(cls, shape, dtype, *, limit: int):
    """numpy's array reconstructor, for an ndarray of at most `limit` elements (pickles pass shape (0,))."""
    if cls is not np.ndarray or int(np.prod(shape)) > limit:
        raise pickle.UnpicklingError(f"refused array reconstruction {cls!r} {shape}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buf, dtype, shape, order):
    """numpy's protocol-5 array reconstructor: a view of bytes that are already in the file."""
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"refused array buffer of type {type(buf).__name__}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _latin1(text, encoding="latin1"):
    """What python 3's protocol-2 pickles call to rebuild bytes (`_codecs.encode(text, 'latin1')`), latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {  # (module, name) -> object: what CIFAR's pickles (python 2 and 3, numpy 1 and 2) reference
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, raw: bytes):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.limit = len(raw)

    def find_class(self, module, name):
        try:
            found = _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None
        return functools.partial(_reconstruct, limit=self.limit) if found is _reconstruct else found


def _scan(raw: bytes) -> None:
    """Walk the opcodes without executing them; reject memo indices beyond the number of opcodes."""
    for count, (op, arg, _) in enumerate(pickletools.genops(raw)):
        if op.name in _MEMO_OPS and int(arg) > count:
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {count}")


def read_cifar_batch(path, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 (N,)) of one CIFAR python batch file; BadFileError otherwise."""
    expected = f"a CIFAR python batch (a pickled dict with 'data' (N, {_PIXELS}) uint8 and N '{label_key.decode()}')"
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw:
        raise BadFileError(path, expected, "the file is empty")
    try:
        _scan(raw)
        batch = _PlainDataUnpickler(raw).load()
    except Exception as err:  # UnpicklingError, ValueError, EOFError, MemoryError, OverflowError, ...
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadFileError(path, expected, f"it does not unpickle as plain data ({type(err).__name__}: {first})"
                           ) from None
    if not isinstance(batch, dict):
        raise BadFileError(path, expected, f"it holds a {type(batch).__name__}, not a dict")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        raise BadFileError(path, expected, f"its keys are {sorted(map(repr, batch))[:8]}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        raise BadFileError(path, expected, f"'data' is {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise BadFileError(path, expected, f"the labels are not an integer list ({err})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise BadFileError(path, expected, f"{len(data)} images but labels of dtype {labels.dtype}, shape "
                                           f"{labels.shape}")
    return data, labels.astype(np.int64)


def _resolve_folder(root: str, num_classes: int) -> str:
    layout = _LAYOUT[num_classes]
    for candidate in (root, os.path.join(root, layout["folder"])):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in layout["train"] + layout["test"]):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-{num_classes} python folder at {root!r}: expected the files "
        f"{layout['train'] + layout['test']} in it or in {layout['folder']}/ below it "
        f"(the 'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html)")


def load_cifar(root: str, num_classes: int = 10, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images (HWC) and (N,) int64 labels of one split ('train' or 'test')."""
    if num_classes not in _LAYOUT:
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _resolve_folder(root, num_classes)
    layout = _LAYOUT[num_classes]
    images, labels = [], []
    for name in layout[split]:
        path = os.path.join(folder, name)
        data, lab = read_cifar_batch(path, layout["labels"])
        check_labels(lab, num_classes, f"CIFAR-{num_classes} batch file {path}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)
