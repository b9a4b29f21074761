"""What both trainers share: recipes, the command-line schema, data splits and the run summary.

`torch_impl/train.py` and `ms_impl/train.py` parse the same arguments (`parse_train_args`), split
data the same way (`resolve_splits`) and write the same outputs, so a run in either framework
is described and judged identically: `finalize_run` turns the per-exit logits of the calibration and
test splits into the npz outputs, thresholds, plots and `summary.json` (layout in `summary.py`);
`run_files` names the files of --output; `CSVLog` writes log.csv; `lr_at` is timm's cosine schedule as
numbers (for trainers without timm).
"""
from .args import build_eval_parser, build_train_parser, parse_eval_args, parse_train_args
from .finalize import checkpoint_extras, finalize_run, format_summary, load_baselines, run_pictures
from .gallery import SplitImages
from .logs import CSVLog, epoch_row, format_epoch_line
from .recipes import DIGITS_RECIPE, REFERENCE_RECIPES, recipe_for
from .run_files import resolve_resume, run_files, write_run_config
from .schedule import lr_at, lr_for_args, total_epochs
from .splits import DataSplits, SplitData, resolve_splits
from .summary import SUMMARY_KEYS, build_summary, load_summary, validate_summary, write_summary

__all__ = ["build_eval_parser", "build_train_parser", "parse_eval_args", "parse_train_args", "checkpoint_extras",
           "finalize_run", "load_baselines", "run_pictures", "SplitImages", "format_summary", "CSVLog", "epoch_row",
           "format_epoch_line", "DIGITS_RECIPE",
           "REFERENCE_RECIPES", "recipe_for", "lr_at", "lr_for_args", "total_epochs", "resolve_resume", "run_files",
           "write_run_config", "DataSplits", "SplitData", "resolve_splits", "SUMMARY_KEYS", "build_summary",
           "load_summary", "validate_summary", "write_summary"]
