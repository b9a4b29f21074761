"""Write an export folder whole or not at all: a hidden staging folder beside it, renamed at the end.

    with staged_folder("exports/t2t12", force=False) as tmp:
        ...write every file into tmp...
    # now exports/t2t12 holds them all; on any error nothing is left (and an old folder is untouched)

The project's output-folder policy (common/training/output_folder.py), for a folder that is one artefact:

- a missing or empty destination is written (missing parent folders are made, and removed again on failure);
- a destination holding a previous export (its manifest.json and exactly the files it lists) is refused
  unless `force`; with `force` the old export is moved aside, the new one renamed in and the old one
  deleted, so a reader sees the old export or the new one, never a mixture;
- a destination holding anything else (other files, or files beside an export) is refused even with
  `force`: an export never deletes what it did not write.

Without a destination, `new_export_folder` makes `outputs/export/<YYYYmmdd-HHMMSS>-<name>` (empty, exclusive).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from common.training.output_folder import missing_ancestors

from .manifest import FORMAT, MANIFEST, DeployError


def _export_files(out: Path) -> set[str] | None:
    """The files of the export in `out` (its manifest and what it lists), or None if `out` holds no export."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None
    return {MANIFEST, *data["files"]}


def check_destination(out, force: bool) -> None:
    """DeployError unless an export may be written to `out` (module docstring). Missing parent folders are
    fine (`staged_folder` makes them, as training makes its --output); one that is a file is not."""
    out = Path(out)
    parent = out.resolve().parent
    missing = missing_ancestors(parent)
    ancestor = missing[-1].parent if missing else parent  # the nearest one that exists
    if not ancestor.is_dir():
        raise DeployError(f"cannot write {out}: {ancestor} is not a folder")
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise DeployError(f"{out} exists and is not a folder; an export is a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    listed = _export_files(out)
    if listed is None or set(entries) - listed:
        others = entries if listed is None else sorted(set(entries) - listed)
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise DeployError(f"{out} holds files that are not an export ({shown}); an export never replaces them, "
                          "not even with --force: choose another --out")
    if not force:
        raise DeployError(f"{out} holds an export; pass --force to replace it (nothing was written)")


def new_export_folder(name: str, root="outputs") -> Path:
    """A new, empty `root/export/<YYYYmmdd-HHMMSS>-<name>` folder (the project's default output layout)."""
    from common.training.output_folder import new_run_folder
    return new_run_folder("export", name, root)


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
    made = missing_ancestors(parent)  # removed again if the export fails: a failed command leaves no trace
    tmp = parent / f".{out.name}.staging-{uuid.uuid4().hex}"
    done = False
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        for f in tmp.iterdir():  # the files are complete on disk before the folder appears
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        check_destination(out, force)  # again: something may have appeared there while exporting
        old = None
        if out.exists():
            old = parent / f".{out.name}.old-{uuid.uuid4().hex}"
            out.rename(old)  # an empty folder or a previous export (checked above)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)  # put the previous export back
            raise
        _fsync_dir(parent)
        done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first; stop at the first that is not empty (someone else's now)
                try:
                    folder.rmdir()
                except OSError:
                    break
