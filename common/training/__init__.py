"""What both trainers share: recipes, the command-line schema, data splits and the run summary.

`torch_impl/train.py` and `ms_impl/train.py` parse the same arguments (`parse_train_args`), split
data the same way (`resolve_splits`) and write the same outputs, so a run in either framework
is described and judged identically.
"""
from .args import build_train_parser, parse_train_args
from .recipes import DIGITS_RECIPE, REFERENCE_RECIPES, recipe_for
from .splits import DataSplits, SplitData, resolve_splits

__all__ = ["build_train_parser", "parse_train_args", "DIGITS_RECIPE", "REFERENCE_RECIPES", "recipe_for",
           "DataSplits", "SplitData", "resolve_splits"]
