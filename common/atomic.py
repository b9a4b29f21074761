"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a partial file,
and once a write returns, the new file survives a crash or power loss.

Every writer of the project (checkpoints and training states of both frameworks, the converter's outputs,
exit outputs, threshold curves, plots, summaries, logs) goes through here. The content goes to a temporary
file in the destination directory, which is flushed and fsynced; `os.replace` moves it over the destination
(atomic on POSIX and Windows), and the directory is fsynced so the rename itself is on disk.
`atomic_path` serves writers that insist on a file name (MindSpore's `save_checkpoint`, safetensors'
`save_file`): they write the temporary path, which is then fsynced, renamed and its directory fsynced the same way.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Callable, Iterator


def _temp_beside(path: Path, suffix: str = "") -> Path:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}"


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (for files written by a library under their own handle)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in directory `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(binary_file)` on a temporary file, then move it to `path`; returns `path`.

    The parent directory must exist. On any error the temporary file is removed and the
    destination is left untouched.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` (ending in `suffix`); fsync it and move it to `path` on success.

    For writers that take a file name: `with atomic_path(p, ".ckpt") as tmp: save(tmp)`.
    On any error the temporary file is removed and the destination is left untouched.
    """
    path = Path(path)
    tmp = _temp_beside(path, suffix)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer of {path} did not create its temporary file {tmp}")
        fsync_file(tmp)
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
