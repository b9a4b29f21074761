"""Thresholds and budgeted evaluation of DVT cascades (pure numpy; no torch or mindspore).

Pipeline: a framework's evaluation script writes per-exit logits with `save_exit_outputs` (layout in
`outputs.py`); `calibration_test_split` makes a seeded held-out split; `ExitScores.from_outputs` computes
the exit criterion; `solve(name, calibration_scores, budgets)` returns a `ThresholdCurve`, which is saved
with the checkpoint (`to_dict`) and applied at run time with `thresholds_for_budget` and the one exit
rule `exit_indices` / `exit_mask`. `pipeline.run_thresholds` runs all of it on a calibration and a test split
(solve, evaluate, thresholds.json with its "default_solver", plots); `tools/solve_thresholds.py` and both
trainers call it; `ThresholdCurve.load(run_folder)` gives a run's default curve.

Modules: outputs (npz layout), scores (criteria), rule (exit rule), evaluate (accuracy, GFLOPs, exit
fractions, anytime accuracy), random_exit, budgets, curve (ThresholdCurve and its loader), tables (lookup
tables over a threshold grid), geometric / genetic / exact / anchored (solvers; `DEFAULT_SOLVER` =
"anchored"), solvers (common interface), generalisation (test curves compared at matched cost), splits,
synthetic (test data), plots.
"""
from .anchored import solve_anchored, solve_margin
from .budgets import BUDGET_RTOL, budget_grid, expected_gflops, validate_budgets, within_budget
from .curve import ThresholdCurve, curve_from_results
from .evaluate import Evaluation, anytime_accuracy, evaluate_exits, evaluate_thresholds
from .exact import solve_exact
from .genetic import GeneticConfig, solve_genetic
from .geometric import default_budgets, geometric_fractions, geometric_thresholds, solve_geometric
from .outputs import ExitOutputs, ExitOutputsError, load_exit_outputs, save_exit_outputs
from .random_exit import evaluate_random_exit, exit_counts_for_fractions, random_exit_curve, random_exits
from .rule import exit_indices, exit_mask, exit_thresholds
from .scores import CRITERIA, ExitScores, entropy_score, exit_correct, exit_scores, max_softmax
from .solvers import DEFAULT_SOLVER, SOLVERS, solve
from .splits import calibration_test_split
from .synthetic import synthetic_exit_outputs
from .tables import ThresholdTables

__all__ = [
    "solve_anchored", "solve_margin", "curve_from_results", "DEFAULT_SOLVER", "ThresholdTables", "BUDGET_RTOL", "budget_grid", "expected_gflops", "validate_budgets", "within_budget", "ThresholdCurve",
    "Evaluation", "anytime_accuracy", "evaluate_exits", "evaluate_thresholds", "solve_exact", "GeneticConfig",
    "solve_genetic", "default_budgets", "geometric_fractions", "geometric_thresholds", "solve_geometric",
    "ExitOutputs", "ExitOutputsError", "load_exit_outputs", "save_exit_outputs", "evaluate_random_exit",
    "exit_counts_for_fractions", "random_exit_curve", "random_exits", "exit_indices", "exit_mask",
    "exit_thresholds", "CRITERIA", "ExitScores", "entropy_score", "exit_correct", "exit_scores",
    "max_softmax", "SOLVERS", "solve", "calibration_test_split", "synthetic_exit_outputs",
]
