"""Where a command writes: a new folder per run by default, and never over another run's files.

Policy of every command that writes a run folder (both trainers, both evaluators, tools/solve_thresholds.py;
new tools should call `claim_output` the same way):

- No `--output`: a new folder `outputs/<kind>/<YYYYmmdd-HHMMSS>-<name>` (timm's layout), created exclusively,
  with `-1`, `-2`, ... appended when two runs start in the same second. Its path is printed at the start.
- An existing folder that holds none of the files the command writes is used as it is (other files in it
  are never touched).
- An existing folder that holds some of them is refused (`RunFolderError`, exit status 2) unless
  - training continues the run found there (`--resume auto`, or `--resume` naming that folder's state), or
  - `--force` is given: then exactly the files the command writes that are already there are deleted
    before it starts (they are listed on the console); nothing else in the folder is touched.
- Evaluation never writes into a training run's folder (one holding `last_state.*`, `log.csv` or `args.yaml`),
  threshold solving into no run's folder (also not one with a `summary.json`), not even with `--force`: the
  summary and thresholds there belong to that run.
- The folder is locked (`flock`) while the command runs, so a second command writing into it at the same
  time is refused; a folder this command created and left empty (it failed before writing) is removed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (the other checks still apply)
    fcntl = None

from common.thresholds.pipeline import THRESHOLD_FILES

from .run_files import EASY_HARD_FILE, PLOTS, run_files

OUTPUT_ROOT = "outputs"
# Files only a training run writes: a folder holding one of them is a training run's folder.
TRAINING_MARKERS = ("last_state.pth", "last_state.ckpt", "log.csv", "args.yaml")
_MAX_SUFFIX = 1000


class RunFolderError(ValueError):
    """An output folder the command must not write into; the message says what to do instead."""


def _flatten(names: Iterable) -> list[str]:
    out = []
    for name in names:
        if isinstance(name, (list, tuple)):
            out += _flatten(name)
        elif name:
            out.append(str(name))
    return sorted(set(out))


def training_files() -> list[str]:
    """Every file a training run of either framework writes into its folder."""
    return _flatten(list(run_files("torch").values()) + list(run_files("mindspore").values()) + [EASY_HARD_FILE])


def evaluation_files() -> list[str]:
    """Every file `evaluate.py` (either framework) writes into its folder."""
    names = []
    for framework in ("torch", "mindspore"):
        files = run_files(framework)
        names += [files[k] for k in ("summary", "config", "calib_outputs", "test_outputs", "thresholds")]
    return _flatten(names + list(PLOTS) + [EASY_HARD_FILE])


def threshold_files() -> list[str]:
    """Every file `tools/solve_thresholds.py` writes into its folder."""
    return _flatten(THRESHOLD_FILES)


def safe_name(text: str) -> str:
    """A folder-name-safe version of a model or file name (timm's safe_model_name, plus dots)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return cleaned or "run"


def missing_ancestors(path: Path) -> list[Path]:
    """`path` and those of its ancestors that do not exist yet, deepest first (what mkdir(parents=True) makes)."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def new_run_folder(kind: str, name: str, root: str | os.PathLike = OUTPUT_ROOT) -> Path:
    """Create and return `root/kind/<YYYYmmdd-HHMMSS>-<name>[-N]`; exclusive, so two runs never share one."""
    parent = Path(root) / kind
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name)}"
    for n in range(_MAX_SUFFIX):
        candidate = parent / (base if n == 0 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunFolderError(f"cannot create a new folder {parent / base}-N: {_MAX_SUFFIX} of them exist already")


def existing(folder: Path, names: Iterable[str]) -> list[str]:
    """Which of `names` exist inside `folder` (files or folders)."""
    return [n for n in names if os.path.lexists(folder / n)]


class OutputFolder:
    """A claimed output folder: `.path`, whether this process created it, and the lock that it holds."""

    def __init__(self, path: Path, created: list[Path]):
        self.path, self.created, self._fd = path, created, None  # created: folders made here, deepest first

    def lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderError(f"{self.path} is being written by another running command; wait for it or "
                                 "choose another output folder") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for folder in self.created:  # made here and left empty (the command failed early): leave no trace
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): keep it and everything above it
                break


def check_folder(path: Path, *, files: list[str], command: str, flag: str = "--output", force: bool = False,
                 continue_run: bool = False, protected: Sequence[str] = (), hint: str = "") -> list[str]:
    """Raise RunFolderError unless `command` may write `files` into `path`; returns the files `--force` replaces."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{flag} {path} exists and is not a folder")
    if not path.is_dir():
        return []
    markers = existing(path, protected)
    if markers:
        kind = "a training run's" if set(markers) & set(TRAINING_MARKERS) else "another run's"
        raise RunFolderError(f"{flag} {path} is {kind} folder (it holds {', '.join(markers)}); {command} never "
                             f"replaces {kind} files, not even with --force: choose another {flag} (by default each "
                             "run gets a new folder under outputs/)")
    if continue_run:
        return []
    clash = existing(path, files)
    if clash and not force:
        shown = ", ".join(clash[:6]) + (f" and {len(clash) - 6} more" if len(clash) > 6 else "")
        raise RunFolderError(f"{flag} {path} already holds the files of a run ({shown}); nothing was written. "
                             f"{hint}Pass --force to replace them (only those files are deleted), or choose another "
                             f"{flag} (by default each run gets a new folder under outputs/)")
    return clash


@contextlib.contextmanager
def claim_output(output: str | os.PathLike | None, *, kind: str, name: str, files: list[str], command: str,
                 flag: str = "--output", force: bool = False, continue_run: bool = False, protected: Sequence[str] = (),
                 hint: str = "",
                 writer: bool = True, root: str | os.PathLike = OUTPUT_ROOT, quiet: bool = False) -> Iterator[Path]:
    """The folder a command writes into, checked, created and locked for the duration of the `with` block.

    `output=None`: a new folder under `root/kind/`. `files`: the names the command writes (what `--force`
    deletes). `continue_run`: training resumes the run in this folder. `protected`: names that mark a folder
    the command must never write into, not even with --force (evaluators: `TRAINING_MARKERS`). `writer=False` (ranks > 0 of a distributed run): check
    only; neither create, lock nor delete anything.
    """
    if output is None or str(output) == "":
        if not writer:
            yield Path(root) / kind / "(chosen by rank 0)"
            return
        made = missing_ancestors(Path(root) / kind)
        path = new_run_folder(kind, name, root)
        folder = OutputFolder(path, [path] + made)
        if not quiet:
            print(f"output: {folder.path}", flush=True)
        folder.lock()
        try:
            yield folder.path
        finally:
            folder.release()
        return
    path = Path(output)
    check_folder(path, files=files, command=command, flag=flag, force=force, continue_run=continue_run,
                 protected=protected, hint=hint)
    if not writer:
        yield path
        return
    made = missing_ancestors(path)
    path.mkdir(parents=True, exist_ok=True)
    folder = OutputFolder(path, made)
    folder.lock()
    try:
        # Checked again under the lock: another command may have written here between the check and the lock.
        replaced = check_folder(path, files=files, command=command, flag=flag, force=force, continue_run=continue_run,
                                protected=protected, hint=hint)
        for name_ in replaced:
            target = path / name_
            if target.is_dir() and not target.is_symlink():
                raise RunFolderError(f"{flag} {path}: {name_} is a folder; --force replaces files only")
            target.unlink()
        if replaced and not quiet:
            print(f"--force: deleted the previous run's {', '.join(replaced)} in {path}", file=sys.stderr, flush=True)
        yield path
    finally:
        folder.release()


def claim_train_output(args, framework: str, writer: bool = True):
    """`claim_output` for `torch_impl/train.py` / `ms_impl/train.py`: continuing the run found in --output
    (`--resume auto`, or `--resume` naming its state file) is allowed, starting another one there is not."""
    command = f"{'torch_impl' if framework == 'torch' else 'ms_impl'}/train.py"
    state_name = run_files(framework)["train_state"]
    if not args.output:
        if args.resume == "auto":
            raise RunFolderError("--resume auto continues the run in --output: name its folder, e.g. "
                                 "--output outputs/train/<run>")
        return claim_output(None, kind="train", name=args.model, files=training_files(), command=command,
                            writer=writer)
    out = Path(args.output)
    state = out / state_name
    if args.resume == "auto":
        continue_run = state.is_file()
    else:
        continue_run = bool(args.resume) and os.path.isfile(args.resume) and state.is_file() and \
            os.path.samefile(args.resume, state)
    hint = "" if args.resume or not state.is_file() else "To continue that run pass --resume auto. "
    if args.resume == "auto" and not continue_run:
        hint = f"There is no {state_name} to resume. "
    return claim_output(out, kind="train", name=args.model, files=training_files(), command=command,
                        force=getattr(args, "force", False), continue_run=continue_run, hint=hint, writer=writer)


def claim_eval_output(args, framework: str):
    """`claim_output` for `torch_impl/evaluate.py` / `ms_impl/evaluate.py`: never a training run's folder; a
    previous evaluation's only with --force. The default folder is named after --model or the checkpoint."""
    command = f"{'torch_impl' if framework == 'torch' else 'ms_impl'}/evaluate.py"
    ckpt = Path(args.checkpoint)
    name = args.model or (f"{ckpt.parent.name}-{ckpt.stem}" if ckpt.stem in ("checkpoint", "model") else ckpt.stem)
    return claim_output(args.output, kind="eval", name=name, files=evaluation_files(), command=command,
                        force=args.force, protected=TRAINING_MARKERS)


def claim_thresholds_output(args):
    """`claim_output` for `tools/solve_thresholds.py`: never the folder of a training run or an evaluation (whose
    summary.json describes the thresholds there); a previous solve's only with --force."""
    return claim_output(args.out, kind="thresholds", name=Path(args.outputs).stem, files=threshold_files(),
                        command="tools/solve_thresholds.py", flag="--out", force=args.force,
                        protected=TRAINING_MARKERS + ("summary.json",))
