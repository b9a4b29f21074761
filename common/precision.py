"""Mixed-precision agreement: how often a model in fp16 / bf16 (torch autocast, MindSpore AMP O1 / O2) decides as
it does in float32, in both frameworks.

    table = agreement_table({"torch fp32": logits, "torch fp16": ..., "mindspore O1": ...}, reference="torch fp32",
                            thresholds=[...])
    check_tolerance(table)        # the limits below; a list of what is outside them

Per run against the reference, as fractions of the samples: per-exit top-1 agreement; exit-decision agreement
at the run's own solved thresholds (one set per budget, `thresholds.json`) and over the threshold sweep of
`common.divergence`; and per-exit logits max |run - reference|.

Tolerances (parity/README.md; measured on the digits default run, a 97.5%-accurate dvt_tiny_digits, on its 359
test images): against float32, a float16 run (torch autocast fp16, MindSpore AMP O1 / O2) keeps >= 99% of
each exit's top-1, >= 98% of the exit decisions at every solved threshold set and >= 99.5% on average over
them, and its logits within 0.05; a bfloat16 run (8-bit mantissa) >= 98%, >= 93%, >= 98% and 0.25; the other
framework in float32 everything, logits within 2e-5. A decision is the exit an image leaves at; the solved
sets are every budget of every solver in the run's thresholds.json.
"""
from __future__ import annotations

import numpy as np

from .divergence import exit_agreement
from .thresholds.rule import exit_indices
from .thresholds.scores import max_softmax

TOLERANCE = {  # dtype -> (top-1 agreement, decision agreement: worst set, mean over sets; logits max-abs)
    "fp32": (1.0, 1.0, 1.0, 2e-5),  # the other framework in float32: the parity suite's limit
    "fp16": (0.99, 0.98, 0.995, 0.05),
    "bf16": (0.98, 0.93, 0.98, 0.25),
}
RUN_DTYPE = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "O1": "fp16", "O2": "fp16", "O1-bf16": "bf16", "O2-bf16": "bf16"}


def decision_agreement(ref: list, run: list, thresholds: list) -> list[float]:
    """Fraction of samples leaving at the same exit, for each threshold set (K-1 values each)."""
    s_ref = np.stack([max_softmax(z) for z in ref])
    s_run = np.stack([max_softmax(z) for z in run])
    return [float(np.mean(exit_indices(s_ref, t) == exit_indices(s_run, t))) for t in thresholds]


def agreement_row(ref: list, run: list, thresholds: list | None = None) -> dict:
    exits, sweep = exit_agreement(ref, run)
    row = {"top1_agreement": [e["top1_agreement"] for e in exits],
           "logits_max_abs": [e["logits_max_abs"] for e in exits],
           "sweep_decision_agreement_min": sweep.get("min_agreement", 1.0),
           "sweep_decision_agreement_mean": sweep.get("mean_agreement", 1.0)}
    if thresholds:
        at = decision_agreement(ref, run, thresholds)
        row.update(decision_agreement_min=min(at), decision_agreement_mean=float(np.mean(at)),
                   threshold_sets=len(at))
    return row


def agreement_table(runs: dict, reference: str, thresholds: list | None = None) -> dict:
    """run name -> agreement_row against `runs[reference]`, for every other run."""
    ref = runs[reference]
    return {name: agreement_row(ref, logits, thresholds) for name, logits in runs.items() if name != reference}


def check_tolerance(row: dict, dtype: str) -> list[str]:
    """What in one agreement row is outside the tolerance of `dtype` ('fp32' | 'fp16' | 'bf16')."""
    top1, worst, mean, logits = TOLERANCE[dtype]
    bad = [f"exit {k} top-1 agreement {a:.4f} < {top1}" for k, a in enumerate(row["top1_agreement"]) if a < top1]
    bad += [f"exit {k} logits max-abs {d:.3g} > {logits}" for k, d in enumerate(row["logits_max_abs"]) if d > logits]
    if row.get("decision_agreement_min", 1.0) < worst:
        bad.append(f"exit decisions agree on {row['decision_agreement_min']:.4f} < {worst} at the worst solved set")
    if row.get("decision_agreement_mean", 1.0) < mean:
        bad.append(f"exit decisions agree on {row['decision_agreement_mean']:.4f} < {mean} on average")
    return bad
