"""Framework-neutral half of adaptive (early-exit) inference: thresholds in, exit decisions out.

`torch_impl.models.adaptive` and `ms_impl.models.adaptive` run the exits; everything they decide goes
through here, so that both frameworks take the same decisions as the offline evaluation:

- `resolve_thresholds`: a threshold set (K-1 or K numbers) or a `ThresholdCurve` plus a budget ->
  thresholds (K,) float64 with the last one -inf, and the criterion they belong to. Per-sample
  thresholds ((B, K-1) or (B, K) numbers, or a curve with one budget per sample) give (B, K): requests
  with different budgets share one batch, each row decided by its own thresholds.
- `leave_mask`: which of the samples that reached exit k leave there. The score is the criterion's
  function from `common.thresholds.scores` (float64 max-softmax or entropy score, row by row) and the
  comparison is `common.thresholds.rule.exit_mask`, the one exit rule: given the same logits, online
  decisions equal `offline_exits` bit for bit. Thresholds (K,) are shared; (n, K) hold one row per sample.
- `offline_exits`: the exit of every sample from the logits of every exit (the "full cascade + offline
  rule" that adaptive inference must reproduce); with (N, K) thresholds the rule is applied row by row.
- `thresholds_for_fractions`: thresholds under which given fractions of a batch leave at each exit,
  taken from the samples' own scores (midpoints between neighbouring scores, so that rounding noise of
  the order of 1e-7 cannot move a sample across a threshold); used by the benchmark and the tests.
- `stage_needs` and `ExitTracker`: the host-side bookkeeping of one adaptive batch (what exit k must hand
  on, which input rows are still in the cascade and their thresholds, where each left, how to put the
  logits back in input order), shared so that the two frameworks' loops differ only in their tensor calls.
- `relation_resample_matrix`: the constant of the fast relation-reuse kernels of both frameworks.
"""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from .resample import resample_matrix
from .thresholds.curve import ThresholdCurve
from .thresholds.rule import exit_indices, exit_mask, exit_thresholds
from .thresholds.scores import SCORED_CRITERIA, check_criterion, entropy_score, max_softmax

SCORE_FUNCTIONS = {"confidence": max_softmax, "entropy": entropy_score}


def _check_adaptive_criterion(criterion: str) -> str:
    check_criterion(criterion)
    if criterion not in SCORED_CRITERIA:
        raise ValueError(f"adaptive inference needs a scored criterion {list(SCORED_CRITERIA)}, got {criterion!r} "
                         "(the random policy has no per-sample score; evaluate it offline with "
                         "common.thresholds.random_exit)")
    return criterion


def resolve_thresholds(thresholds, num_exits: int, criterion: str | None = None,
                       budget=None, batch_size: int | None = None) -> tuple[np.ndarray, str]:
    """-> (thresholds float64 (K,) shared by the batch, or (B, K) one row per sample; last column -inf, criterion).

    `thresholds`: K-1 or K numbers (the last exit's is ignored; +inf closes an exit, -inf lets every sample
    leave), or (B, K-1) / (B, K) numbers, one row per sample; or a `ThresholdCurve` together with `budget`
    (GFLOPs per image; the curve's best point that fits): one number, or (B,) numbers, one per sample.
    `criterion` defaults to "confidence", or to the curve's criterion; a mismatch with the curve is an error.
    `batch_size`, when given, is checked against per-sample rows.
    """
    if isinstance(thresholds, ThresholdCurve):
        curve = thresholds
        if budget is None:
            raise ValueError("a ThresholdCurve needs a budget (GFLOPs per image) to pick its thresholds")
        if curve.num_exits != num_exits:
            raise ValueError(f"the threshold curve is for {curve.num_exits} exits, the model has {num_exits}")
        if criterion is not None and criterion != curve.criterion:
            raise ValueError(f"criterion {criterion!r} does not match the curve's {curve.criterion!r}")
        criterion = _check_adaptive_criterion(curve.criterion)
        if np.ndim(budget) == 0:
            return curve.thresholds_for_budget(budget), criterion
        budgets = np.asarray(budget, dtype=np.float64)
        if budgets.ndim != 1:
            raise ValueError(f"per-sample budgets must have shape (B,), got {budgets.shape}")
        unique, inverse = np.unique(budgets, return_inverse=True)  # one curve look-up per distinct budget
        rows = np.stack([curve.thresholds_for_budget(b) for b in unique]) if unique.size else \
            np.empty((0, num_exits))
        return _check_rows(rows[inverse.reshape(-1)], batch_size), criterion
    if budget is not None:
        raise ValueError("budget is only meaningful with a ThresholdCurve; got plain thresholds")
    criterion = _check_adaptive_criterion("confidence" if criterion is None else criterion)
    t = np.asarray([] if thresholds is None else thresholds, dtype=np.float64)
    if t.ndim <= 1:
        return exit_thresholds(t, num_exits), criterion
    if t.ndim != 2 or t.shape[1] not in (num_exits - 1, num_exits):
        raise ValueError(f"per-sample thresholds of a {num_exits}-exit cascade must have shape "
                         f"(B, {num_exits - 1}) or (B, {num_exits}), got {t.shape}")
    if np.isnan(t).any():
        raise ValueError(f"per-sample thresholds contain NaN (rows {np.flatnonzero(np.isnan(t).any(1)).tolist()})")
    rows = np.full((t.shape[0], num_exits), -np.inf)
    rows[:, :num_exits - 1] = t[:, :num_exits - 1]  # the last exit takes everyone: its value is ignored
    return _check_rows(rows, batch_size), criterion


def _check_rows(rows: np.ndarray, batch_size: int | None) -> np.ndarray:
    if batch_size is not None and rows.shape[0] != batch_size:
        k = rows.shape[1]
        raise ValueError(f"per-sample thresholds for {rows.shape[0]} samples, the batch has {batch_size}: "
                         f"expected ({k},) or ({batch_size}, {k})")
    return rows


def scores(logits: np.ndarray, criterion: str = "confidence") -> np.ndarray:
    """Per-row float64 score of `criterion` for logits (N, C) (the functions of common.thresholds.scores)."""
    return SCORE_FUNCTIONS[_check_adaptive_criterion(criterion)](logits)


def leave_mask(logits: np.ndarray, thresholds: np.ndarray, k: int, criterion: str = "confidence") -> np.ndarray:
    """(N,) bool: which of the N samples at exit k leave there (all of them at the last exit).

    `thresholds`: (K,) for every sample, or (N, K), row i for sample i (`ExitTracker.active_thresholds`)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if k == t.shape[-1] - 1:
        return np.ones(len(logits), dtype=bool)
    if t.ndim == 2:
        if t.shape[0] != len(logits):
            raise ValueError(f"exit {k}: thresholds for {t.shape[0]} samples, {len(logits)} reached the exit")
        t = t.T  # (K, N): exit_mask compares row k, i.e. every sample with its own threshold of exit k
    return exit_mask(scores(logits, criterion), t, k)


def offline_exits(logits: np.ndarray, thresholds, criterion: str = "confidence") -> np.ndarray:
    """Exit index (N,) of each sample from the logits (K, N, C) of the full cascade (the offline rule).

    `thresholds` (K-1,) / (K,) for all samples, or (N, K-1) / (N, K): the rule applied row by row."""
    logits = np.asarray(logits)
    s = np.stack([scores(lg, criterion) for lg in logits])
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim < 2:
        return exit_indices(s, t)
    t, _ = resolve_thresholds(t, len(logits), criterion, batch_size=s.shape[1])
    exits = np.empty(s.shape[1], dtype=np.int64)
    unique, inverse = np.unique(t, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for j, row in enumerate(unique):  # the offline rule, once per distinct threshold row
        rows = np.flatnonzero(inverse == j)
        exits[rows] = exit_indices(s[:, rows], row)
    return exits


def exit_counts(exit_index, num_exits: int) -> np.ndarray:
    """(K,) number of samples leaving at each exit."""
    return np.bincount(np.asarray(exit_index, dtype=np.int64), minlength=num_exits)[:num_exits]


def counts_for_fractions(fractions, n: int) -> np.ndarray:
    """Integer exit counts summing to `n` closest to `fractions * n` (largest remainders)."""
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if (f < 0).any() or not np.isfinite(f).all() or f.sum() <= 0:
        raise ValueError(f"exit fractions must be non-negative numbers with a positive sum, got {f.tolist()}")
    f = f / f.sum()
    raw = f * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def thresholds_for_fractions(scores_kn: np.ndarray, fractions) -> tuple[np.ndarray, np.ndarray, float]:
    """Thresholds (K,) under which `fractions` (K,) of the N samples leave at each exit.

    `scores_kn` (K, N): the criterion's scores of every exit on the batch (full cascade). At exit k the
    samples still there are sorted by score and the threshold is put halfway between the last one that must
    leave and the first one that must stay (+inf closes an exit that must take nobody, -inf opens it to all).
    Returns (thresholds, counts (K,) that the rule actually gives, margin): the margin is the smallest
    distance between any deciding score and its threshold (inf when no decision is close); exact counts need
    distinct scores at the boundaries, so check `counts` against `counts_for_fractions`.
    """
    s = np.asarray(scores_kn, dtype=np.float64)
    k_exits, n = s.shape
    target = counts_for_fractions(fractions, n)
    if len(target) != k_exits:
        raise ValueError(f"{k_exits} exits need {k_exits} fractions, got {len(target)}")
    thresholds = np.full(k_exits, -np.inf)
    remaining = np.arange(n)
    margin = np.inf
    for k in range(k_exits - 1):
        m = int(target[k])
        if remaining.size == 0:
            thresholds[k] = np.inf
            continue
        order = remaining[np.argsort(-s[k, remaining], kind="stable")]
        sk = s[k, order]
        if m == 0:
            thresholds[k] = np.inf
        elif m >= remaining.size:
            thresholds[k] = -np.inf
        else:
            thresholds[k] = 0.5 * (sk[m - 1] + sk[m])
            margin = min(margin, float(sk[m - 1] - thresholds[k]), float(thresholds[k] - sk[m]))
        leave = s[k, remaining] >= thresholds[k]
        remaining = remaining[~leave]
    counts = exit_counts(exit_indices(s, thresholds), k_exits)
    return thresholds, counts, margin


def stage_needs(exits, k: int, fast: bool = True) -> tuple[bool, bool, bool]:
    """What exit k of `exits` (either framework's ViTExit list) must compute for exit k+1:
    (its features, its relations, explicit attention logits)."""
    nxt = exits[k + 1] if k + 1 < len(exits) else None
    features = nxt is not None and nxt.feature_reuse
    relations = nxt is not None and nxt.relation_reuse
    return features, relations, relations or not fast


@dataclass
class StageStep:
    """Exit k's decision, in positions of the rows that ran exit k (what the framework must gather)."""

    num_left: int
    leave: np.ndarray | None  # positions that leave; None: all of them
    keep: np.ndarray | None  # positions that stay; None: all of them (nothing to gather)
    done: bool  # every sample has left: later exits must not run


class ExitTracker:
    """Which input rows are still in the cascade, their thresholds, and where each one left (one adaptive batch).

    `thresholds` (from `resolve_thresholds`): (K,) shared, or (B, K) one row per input sample; the loops
    pass `active_thresholds()` to `leave_mask`, so that per-sample thresholds follow their rows."""

    def __init__(self, batch_size: int, num_exits: int, thresholds: np.ndarray | None = None):
        self.rows = np.arange(batch_size)  # input rows still in the cascade, in the order the stages see them
        self.exit_index = np.full(batch_size, num_exits - 1, dtype=np.int64)
        self.counts = [0] * num_exits
        self._order: list[np.ndarray] = []  # input rows of the leaving samples, stage by stage
        if thresholds is not None:
            thresholds = np.asarray(thresholds, dtype=np.float64)
            if thresholds.shape not in ((num_exits,), (batch_size, num_exits)):
                raise ValueError(f"thresholds of shape {thresholds.shape} for a batch of {batch_size} samples "
                                 f"and {num_exits} exits: expected ({num_exits},) or ({batch_size}, {num_exits})")
        self.thresholds = thresholds

    @property
    def done(self) -> bool:
        return self.rows.size == 0

    def active_thresholds(self) -> np.ndarray:
        """The thresholds of the rows still in the cascade: (K,) if shared, else (n, K) in the stages' order."""
        if self.thresholds is None:
            raise ValueError("this ExitTracker was made without thresholds")
        return self.thresholds if self.thresholds.ndim == 1 else self.thresholds[self.rows]

    def record(self, k: int, leave: np.ndarray | None) -> StageStep:
        """Record exit k's decision for the rows still in (`leave` (n,) bool, None: all leave)."""
        n = self.rows.size
        leave = np.ones(n, dtype=bool) if leave is None else np.asarray(leave, dtype=bool)
        if leave.shape != (n,):
            raise ValueError(f"exit {k}: a decision for {leave.shape} samples, {n} ran the exit")
        n_leave = int(leave.sum())
        self.counts[k] = n_leave
        if n_leave:
            self.exit_index[self.rows[leave]] = k
            self._order.append(self.rows[leave])
        step = StageStep(n_leave, None if n_leave == n else np.flatnonzero(leave),
                         None if n_leave == 0 else np.flatnonzero(~leave), n_leave == n)
        self.rows = self.rows[~leave]
        return step

    def inverse_order(self) -> np.ndarray | None:
        """Index that puts the stages' concatenated logits back in input order; None if already in order."""
        if not self._order:
            return None
        rows = np.concatenate(self._order)
        if np.array_equal(rows, np.arange(rows.size)):
            return None
        inverse = np.empty_like(rows)
        inverse[rows] = np.arange(rows.size)
        return inverse


def relation_resample_matrix(src: int, dst: int, mode: str = "nearest_avgpool") -> np.ndarray:
    """(1 + t*t, 1 + s*s) float32 M such that `M @ R @ M.T` resamples an attention map R from an s x s to a
    t x t token grid: the cls row and column are carried (M[0, 0] = 1) and the patch part is `A kron A`
    (row-major tokens), A = `common.resample.resample_matrix(s, t, mode=mode)`.

    The same maps as the separable `A X A^T` per axis (to fp32 rounding), in two large matrix products per
    map instead of many tiny ones plus slicing and concatenation: the fast path of adaptive inference.
    """
    a = resample_matrix(src, dst, np.float64, mode)
    m = np.zeros((1 + dst * dst, 1 + src * src))
    m[0, 0] = 1.0
    m[1:, 1:] = np.kron(a, a)
    return m.astype(np.float32)
