"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Every writer of the project (checkpoints of both frameworks, exit outputs, threshold curves,
plots, summaries) goes through here: the content is written to a temporary file in the destination
directory, flushed to disk, and moved over the destination with `os.replace` (atomic on POSIX and
Windows). `atomic_path` serves writers that insist on a file name (MindSpore, safetensors).
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Callable, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(binary_file)` on a temporary file, then move it to `path`; returns `path`.

    The parent directory must exist. On any error the temporary file is removed and the
    destination is left untouched.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    tmp = parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` (ending in `suffix`); move it to `path` on success.

    For writers that take a file name: `with atomic_path(p, ".ckpt") as tmp: save(tmp)`.
    On any error the temporary file is removed and the destination is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
