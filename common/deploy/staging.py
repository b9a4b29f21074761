"""Write an output folder whole or not at all: a hidden staging folder beside it, renamed at the end.

    with staged_folder("exports/t2t12", force=False) as tmp:
        ...write every file into tmp...
    # now exports/t2t12 holds them all; on any error nothing is left (and an old folder is untouched)

An existing destination is refused unless `force`; with `force` the old folder is moved aside, the new one
renamed in, and the old one deleted, so a reader sees the old export or the new one, never a mixture.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .manifest import DeployError


def check_destination(out: Path, force: bool, what: str = "output folder") -> None:
    out = Path(out)
    if out.exists() and not force:
        raise DeployError(f"{out} exists; pass --force to replace it (nothing was written)")
    if out.exists() and not out.is_dir():
        raise DeployError(f"{out} exists and is not a folder; the {what} must be a folder")
    if not out.resolve().parent.is_dir():
        raise DeployError(f"cannot write {out}: folder {out.resolve().parent} does not exist")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_folder(out, force: bool = False) -> Iterator[Path]:
    out = Path(out)
    check_destination(out, force)
    parent = out.resolve().parent
    tmp = parent / f".{out.name}.staging-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():  # the files are complete on disk before the folder appears
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if out.exists():
            check_destination(out, force)
            old = parent / f".{out.name}.old-{uuid.uuid4().hex}"
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)  # put the previous export back
            raise
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
