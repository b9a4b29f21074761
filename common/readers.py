"""One reader per file kind, and one error for a file that is not what it should be.

Every command reads its inputs through these functions (and their framework halves: `torch_impl.checkpoint.
read_checkpoint` for torch checkpoints, `ms_impl.checkpoint.read_checkpoint` for MindSpore `.ckpt`), so a
truncated, empty, random or wrong file always ends the same way: `BadFileError`, whose message names the path
and what was expected; every CLI prints it and exits with status 2. A missing file stays `FileNotFoundError`.

    read_yaml(path, "a --config file of flag values")     -> the parsed document
    read_npz(path, "per-exit outputs (.npz)")             -> {name: array}, every member read and checked
    read_safetensors(path)                                -> ({name: numpy array}, metadata); header checked first
    check_safetensors(path)                               -> the header, validated (framework loaders call it)
    read_image(path) / check_image_header(path)           -> RGB PIL image / (format, size) from the header only
    (CIFAR batches: common.data.cifar.read_cifar_batch, which never unpickles anything but plain data)
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np


class BadFileError(ValueError):
    """A file that exists but cannot be used: its path, what was expected, and what was found."""

    def __init__(self, path, expected: str, problem: str):
        self.path, self.expected, self.problem = str(path), expected, problem
        super().__init__(f"{path}: expected {expected}; {problem}")


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def require_file(path, expected: str) -> Path:
    """`path` as a Path; FileNotFoundError unless it is a file, BadFileError if it is empty."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise BadFileError(path, expected, "it is not a regular file")
        raise FileNotFoundError(f"{path}: no such file (expected {expected})")
    if path.stat().st_size == 0:
        raise BadFileError(path, expected, "the file is empty")
    return path


# ---- YAML ----------------------------------------------------------------------------------------------
def read_yaml(path, expected: str = "a YAML file"):
    """The document of a YAML file (safe loader: plain data only)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {expected})")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise BadFileError(path, expected, f"it is not valid YAML ({_describe(err)})") from None


# ---- .npz ----------------------------------------------------------------------------------------------
def read_npz(path, expected: str = "a NumPy .npz archive") -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read eagerly (a truncated member fails here, not later); no pickles."""
    path = require_file(path, expected)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, MemoryError, OverflowError) as err:
        raise BadFileError(path, expected, f"it is not a readable .npz archive ({_describe(err)})") from None
    except AttributeError as err:  # np.load on a non-archive without .files
        raise BadFileError(path, expected, f"it is not an .npz archive ({_describe(err)})") from None


# ---- safetensors ---------------------------------------------------------------------------------------
ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16}
ST_EXPECTED = "a .safetensors file (8-byte header length, JSON header, tensor data)"
_ST_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header


def check_safetensors(path) -> dict:
    """The header of a safetensors file, validated against the file: sizes, dtypes, shapes and offsets.

    The safetensors library checks the same but fails with its own exception type (and, for some damage,
    only when a tensor is touched); checking first gives one clear error for every kind of damage.
    """
    path = require_file(path, ST_EXPECTED)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadFileError(path, ST_EXPECTED, f"the file has {size} bytes, fewer than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _ST_HEADER_LIMIT):
            raise BadFileError(path, ST_EXPECTED, f"the header claims {length} bytes but the file has {size} "
                                                  "(truncated or not a safetensors file)")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadFileError(path, ST_EXPECTED, f"the header is not JSON ({_describe(err)})") from None
    if not isinstance(header, dict):
        raise BadFileError(path, ST_EXPECTED, f"the header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - length
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise BadFileError(path, ST_EXPECTED, "__metadata__ must map strings to strings")
            continue
        try:
            dtype, shape, (begin, stop) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            itemsize = 2 if dtype == "BF16" else np.dtype(ST_DTYPES[dtype]).itemsize
        except (TypeError, KeyError, ValueError) as err:
            raise BadFileError(path, ST_EXPECTED, f"tensor {name!r} has a malformed entry ({_describe(err)})") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not (0 <= begin <= stop) or stop - begin != count * itemsize:
            raise BadFileError(path, ST_EXPECTED, f"tensor {name!r}: offsets {begin}..{stop} do not hold a "
                                                  f"{dtype} tensor of shape {shape}")
        end = max(end, stop)
    if end > data_size:
        raise BadFileError(path, ST_EXPECTED, f"the tensors need {end} bytes of data but the file holds {data_size} "
                                              "(truncated)")
    return header


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exact."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def as_float32_if_bf16(x: np.ndarray) -> np.ndarray:
    """An array whose dtype is a bfloat16 extension type (ml_dtypes) -> float32 (exact); others unchanged."""
    if x.dtype.name == "bfloat16":
        return bf16_bits_to_float32(np.ascontiguousarray(x).view(np.uint16))
    return x


def _decode_raw(path: Path, header: dict) -> dict:
    """Tensors of a checked file straight from its bytes: for BF16, which numpy (and so safetensors.numpy) lacks."""
    with open(path, "rb") as fh:
        fh.seek(8 + struct.unpack("<Q", fh.read(8))[0])
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, stop = info["data_offsets"]
        raw = np.frombuffer(data[begin:stop], dtype=np.dtype(ST_DTYPES[info["dtype"]]).newbyteorder("<"))
        arr = bf16_bits_to_float32(raw) if info["dtype"] == "BF16" else raw.astype(raw.dtype.newbyteorder("="))
        out[name] = arr.reshape(info["shape"])
    return out


def read_safetensors(path) -> tuple[dict, dict]:
    """(name -> numpy array, metadata) of a checked safetensors file; BF16 tensors come back as float32 (exact)."""
    from safetensors.numpy import load_file

    header = check_safetensors(path)
    meta = dict(header.get("__metadata__") or {})
    if any(info.get("dtype") == "BF16" for name, info in header.items() if name != "__metadata__"):
        return _decode_raw(Path(path), header), meta
    try:
        return {k: as_float32_if_bf16(v) for k, v in load_file(str(path)).items()}, meta
    except Exception as err:  # safetensors' own error type (SafetensorError) is not a ValueError
        raise BadFileError(path, ST_EXPECTED, f"it does not load ({_describe(err)})") from None


# ---- images --------------------------------------------------------------------------------------------
IMAGE_EXPECTED = "a decodable image file (JPEG, PNG, ...)"


def _pil_errors():
    from PIL import Image, UnidentifiedImageError
    return (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error,
            Image.DecompressionBombError)


def read_image(path):
    """The image at `path` as an RGB PIL image, fully decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise
    except _pil_errors() as err:
        raise BadFileError(path, IMAGE_EXPECTED, f"it does not decode ({_describe(err)})") from None


def _format_hint(path) -> list[str] | None:
    """PIL's format for the file's extension: trying it first halves the cost of opening a JPEG."""
    from PIL import Image

    if not Image.EXTENSION:
        Image.init()
    fmt = Image.EXTENSION.get(Path(path).suffix.lower())
    return [fmt] if fmt else None


def check_image_header(path) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the file's header alone: cheap enough to run on every file of a data set
    before training, so a corrupt file fails in seconds rather than after the epochs before it."""
    from PIL import Image, UnidentifiedImageError

    try:
        try:
            img = Image.open(path, formats=_format_hint(path))
        except UnidentifiedImageError:  # content of another format than the extension says: PIL reads it anyway
            img = Image.open(path)
        with img:
            fmt, size = img.format, img.size
    except FileNotFoundError:
        raise
    except _pil_errors() as err:
        raise BadFileError(path, IMAGE_EXPECTED, f"its header does not read ({_describe(err)})") from None
    if not fmt or size[0] < 1 or size[1] < 1:
        raise BadFileError(path, IMAGE_EXPECTED, f"its header gives format {fmt!r} and size {size}")
    return fmt, size
