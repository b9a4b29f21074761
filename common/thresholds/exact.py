"""Exact solver: the most accurate threshold set under an average-GFLOPs budget, on the calibration set.

Problem. N calibration samples, K exits with cumulative costs g_0 < ... < g_{K-1}, scores s_k(i) and
correctness c_k(i). Thresholds T_0..T_{K-2} send sample i to the first k with s_k(i) >= T_k (the last exit
takes the rest). Maximise the number of correct samples subject to sum_i g_{exit(i)} <= N * budget.

Only thresholds equal to a score value (or +inf) matter: any T is equivalent to the smallest score >= T.
So exit k's choice is "the t samples with the highest s_k among those reaching k leave", t restricted to
the ends of runs of tied scores.

K = 2 (one threshold). Sort by s_0 descending; with t samples leaving at exit 0, accuracy is
A(t) = prefix_t(c_0) + suffix_t(c_1) and cost g_0 t + g_1 (N - t), decreasing in t, so a budget is a
lower bound t >= t_min. The answer for every budget is a suffix maximum of A over valid t: O(N log N).

K = 3 (two thresholds; also the innermost step for K > 3). Let t samples leave at exit 0 (set by the
s_0 order) and R_t the rest. Group R by s_1 value (descending, groups 0..Q-1); u is the number of groups
that leave at exit 1 (T_1 = the value of group u-1). With d = c_1 - c_2,
    accuracy(t, u) = A(t) + F(t, u),  F(t, u) = sum of d over R_t in groups < u,
    cost(t, u) = g_0 t + g_1 Cnt(t, u) + g_2 (N - t - Cnt(t, u)),  Cnt = number of R_t in groups < u.
Cost falls as Cnt grows, so a budget is Cnt(t, u) >= need(t), i.e. u >= u_min(t) (Cnt is monotone in u),
and the best for a budget is max_t [A(t) + max_{u >= u_min(t)} F(t, u)]: every (t, u) pair is covered,
so the answer is exact. Evaluating it for all N+1 values of t naively is O(N^2). Instead, t runs in
blocks of S: at a block start t0 the arrays F0 = F(t0, .) and C0 = Cnt(t0, .) are built in O(Q); for
t = t0 + delta inside the block, R_t is R_t0 minus the first delta samples of the block, which changes F
and Cnt by a constant on each of the <= S+1 segments of u between the block samples' group positions.
With per-segment maxima and a within-segment suffix maximum of F0 (O(Q)), and an (S x S) table of the
per-segment corrections, max_{u >= u_min} F(t, u) is an O(1) combination of a partial segment and a
suffix maximum over whole segments, and u_min is found by binary search. Total O(N^2 / S + N S + N B
log N) time (S ~ sqrt N) and O(N + S^2 + S B) memory, B = number of budgets. The maximiser is then
recovered for each budget in O(N).

K > 3: the thresholds of exits 0..K-4 are enumerated over all candidate values (nested), and the last
three exits are solved as above with the remaining budget — exact, but the cost grows as N^(K-3) times
the three-exit cost (K = 4, N = 2,000: about 40 s). An outer exit with more distinct scores than
`max_outer_candidates` (default 256; None = always exhaustive) is restricted to values at evenly spaced
ranks. Bound: lowering an optimal outer threshold to the next candidate below only moves samples to an
earlier (cheaper) exit, so the budget still holds, and changes the exit of at most `gap` samples (the
most samples in [c_j, c_j-1) between consecutive candidates); the later exits are then re-optimised
exactly. So the result is within sum over outer levels of gap / N of the optimum. The curve's info
records `exact` and that bound (`max_accuracy_gap`). K <= 3 is always exact.

Ties between equally accurate solutions prefer more samples at earlier (cheaper) exits, and a budget's
solution is replaced by a cheaper budget's solution of equal accuracy.
"""
from __future__ import annotations

import math

import numpy as np

from .budgets import budget_slack, validate_budgets
from .curve import ThresholdCurve
from .evaluate import evaluate_thresholds
from .geometric import default_budgets
from .scores import ExitScores


def solve_exact(scores: ExitScores, budgets=None, *, max_outer_candidates: int | None = 256,
                block_size: int | None = None) -> ThresholdCurve:
    """Maximum calibration accuracy for each budget (GFLOPs; default: the geometric schedule's costs)."""
    budgets = default_budgets(scores) if budgets is None else validate_budgets(budgets, scores.gflops)
    if max_outer_candidates is not None and max_outer_candidates < 2:
        raise ValueError(f"max_outer_candidates must be >= 2 or None, got {max_outer_candidates}")
    n = scores.num_samples
    limits = n * (budgets + budget_slack(budgets))  # total-cost limits
    search = _Search(scores, max_outer_candidates, block_size)
    acc, thresholds = search.solve(0, np.arange(n), limits)
    if (acc < 0).any():  # cannot happen: budget >= g_0 and everyone leaving at exit 0 costs g_0
        raise RuntimeError("exact solver found no feasible threshold set for a valid budget")
    evals = [evaluate_thresholds(scores, t) for t in thresholds]
    got = np.array([e.num_correct for e in evals])
    if not np.array_equal(got, acc):
        raise RuntimeError(f"exact solver bookkeeping disagrees with the exit rule: {acc} vs {got}")
    for j in range(1, len(budgets)):  # equal accuracy at a lower cost: keep the cheaper solution
        if evals[j].num_correct == evals[j - 1].num_correct and \
                evals[j - 1].expected_gflops < evals[j].expected_gflops:
            thresholds[j], evals[j] = thresholds[j - 1], evals[j - 1]
    gap = sum(search.outer_gaps.values())
    info = {"exact": gap == 0, "max_accuracy_gap": gap / n, "max_outer_candidates": max_outer_candidates}
    return ThresholdCurve.from_thresholds("exact", scores, budgets, thresholds, info=info, evaluations=evals)


class _Search:
    """Recursive search over exits; `solve(k, idx, limits)` handles the samples `idx` reaching exit k."""

    def __init__(self, scores: ExitScores, max_outer: int | None, block_size: int | None):
        self.s = scores.scores
        self.c = scores.correct.astype(np.int64)
        self.g = scores.gflops
        self.k_exits = scores.num_exits
        self.max_outer = max_outer
        self.block_size = block_size
        self.outer_gaps: dict[int, int] = {}

    def solve(self, k: int, idx: np.ndarray, limits: np.ndarray):
        """Best correct count (B,) (-1: infeasible) and thresholds (B, K-k) for exits k..K-1."""
        left = self.k_exits - k
        nb = limits.shape[0]
        th = np.full((nb, left), np.inf)
        th[:, -1] = -np.inf
        if idx.size == 0:
            return np.where(limits >= 0, 0, -1), th
        s, c, g = self.s[k:, idx], self.c[k:, idx], self.g[k:]
        if left == 1:
            ok = g[0] * idx.size <= limits
            return np.where(ok, c[0].sum(), -1), th
        if left == 2:
            acc, th[:, 0] = _one_threshold(s[0], c[0], c[1], g[0], g[1], limits)
            return acc, th
        if left == 3:
            acc, th[:, 0], th[:, 1] = _two_thresholds(s[0], s[1], c[0], c[1], c[2], g[0], g[1], g[2],
                                                      limits, self.block_size)
            return acc, th
        best = np.full(nb, -1, dtype=np.int64)
        for value in self._candidates(k, s[0]):
            leave = s[0] >= value
            n_leave = int(leave.sum())
            sub_acc, sub_th = self.solve(k + 1, idx[~leave], limits - g[0] * n_leave)
            total = np.where(sub_acc >= 0, sub_acc + int(c[0][leave].sum()), -1)
            better = (total >= 0) & (total >= best)  # ties: the lower threshold (more leave early)
            best[better] = total[better]
            th[better, 0] = value
            th[better, 1:] = sub_th[better]
        return best, th

    def _candidates(self, k: int, s: np.ndarray) -> np.ndarray:
        """+inf, then distinct scores in descending order (or values at evenly spaced ranks)."""
        distinct = np.unique(s)[::-1]
        if self.max_outer is None or distinct.size + 1 <= self.max_outer:
            return np.concatenate(([np.inf], distinct))
        ranked = np.sort(s)[::-1]
        picks = np.unique(ranked[np.linspace(0, s.size - 1, self.max_outer - 1).round().astype(int)])[::-1]
        # samples between consecutive candidates: [c_j, c_{j-1}) with c_{-1} = +inf
        upper = np.concatenate(([np.inf], picks[:-1]))
        between = np.searchsorted(-ranked, -picks, side="right") - np.searchsorted(-ranked, -upper, side="right")
        self.outer_gaps[k] = max(self.outer_gaps.get(k, 0), int(between.max()))
        return np.concatenate(([np.inf], picks))


def _ceil_need(x: np.ndarray, hi: int) -> np.ndarray:
    return np.clip(np.ceil(x), 0, hi).astype(np.int64)


def _one_threshold(sa, ca, cb, ga, gb, limits):
    """Two exits (a, b): best correct count and T_a per budget. O(N log N + B)."""
    n = sa.shape[0]
    order = np.argsort(-sa, kind="stable")
    sorted_a = sa[order]
    acc = _prefix(ca[order]) + (cb.sum() - _prefix(cb[order]))  # (n+1,)
    valid = _valid_cuts(sorted_a)
    key = np.where(valid, acc * (n + 2) + np.arange(n + 1), -1)  # ties -> larger t (cheaper)
    suffix = np.append(np.maximum.accumulate(key[::-1])[::-1], -1)
    t_min = _ceil_need((gb * n - limits) / (gb - ga), n + 1)
    best = suffix[t_min]
    t = np.where(best >= 0, best % (n + 2), 0)
    thresholds = np.where(t > 0, sorted_a[np.maximum(t - 1, 0)], np.inf)
    return np.where(best >= 0, best // (n + 2), -1), thresholds


def _prefix(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def _valid_cuts(sorted_desc: np.ndarray) -> np.ndarray:
    """t leaving samples (the first t of a descending order) is a threshold iff no tie is split."""
    n = sorted_desc.shape[0]
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = sorted_desc[:-1] != sorted_desc[1:]
    return valid


def default_block_size(n: int) -> int:
    """Rows of t per block: ~sqrt(N)/2 balances the O(N) per-block work against the O(S^2) tables."""
    return int(min(max(16, math.isqrt(max(n, 1)) // 2), 2048))


def _two_thresholds(sa, sb, ca, cb, cc, ga, gb, gc, limits, block_size=None):
    """Three exits (a, b, c): best correct count, T_a and T_b per budget (see the module docstring)."""
    n, nb = sa.shape[0], limits.shape[0]
    order = np.argsort(-sa, kind="stable")
    sorted_a = sa[order]
    valid = _valid_cuts(sorted_a)
    neg_values_b, h = np.unique(-sb, return_inverse=True)  # group 0 = highest s_b
    h = h.reshape(-1)
    q = neg_values_b.shape[0]
    d = cb - cc  # int64
    acc_a = _prefix(ca[order]) + (cc.sum() - _prefix(cc[order]))  # A(t)
    group_d = np.zeros(q, dtype=np.int64)
    np.add.at(group_d, h, d)
    group_n = np.bincount(h, minlength=q).astype(np.int64)
    step = block_size or default_block_size(n)
    big = 2 * n + 2  # > range of F
    neg = -(4 * n + 4)
    best = np.full(nb, -1, dtype=np.int64)
    best_t = np.zeros(nb, dtype=np.int64)
    cols = np.arange(nb)
    f0 = np.zeros(q + 1, dtype=np.int64)
    c0 = np.zeros(q + 1, dtype=np.int64)
    for t0 in range(0, n, step):
        size = min(step, n - t0)
        blk = order[t0:t0 + size]
        hj, dj = h[blk], d[blk]
        np.cumsum(group_d, out=f0[1:])
        np.cumsum(group_n, out=c0[1:])
        # segments of u between the block samples' positions: [0, beta_1), [beta_1, beta_2), ...
        beta, inv = np.unique(hj + 1, return_inverse=True)
        m = beta.shape[0]
        starts = np.concatenate(([0], beta))
        sigma = inv.reshape(-1) + 1
        corr_d = np.zeros((size, m + 1), dtype=np.int64)  # row delta: removed = first delta block samples
        corr_n = np.zeros((size, m + 1), dtype=np.int64)
        if size > 1:
            rows = np.arange(1, size)
            corr_d[rows, sigma[:-1]] = dj[:-1]
            corr_n[rows, sigma[:-1]] = 1
            for a in (corr_d, corr_n):
                np.cumsum(a, axis=0, out=a)
                np.cumsum(a, axis=1, out=a)
        seg_max = np.maximum.reduceat(f0, starts)
        seg_id = np.repeat(np.arange(m + 1), np.diff(np.append(starts, q + 1)))
        offset = (m - seg_id) * big
        suffix_in_seg = np.maximum.accumulate((f0 + offset)[::-1])[::-1] - offset
        suffix_seg = np.maximum.accumulate((seg_max[None, :] - corr_d)[:, ::-1], axis=1)[:, ::-1]
        suffix_seg = np.concatenate((suffix_seg, np.full((size, 1), neg)), axis=1)
        seg_end = np.append(starts[1:] - 1, q)
        count_end = c0[seg_end][None, :] - corr_n  # Cnt at each segment end, nondecreasing per row
        tv = t0 + np.arange(size)
        need = _ceil_need((ga * tv[:, None] + gc * (n - tv)[:, None] - limits[None, :]) / (gc - gb), n + 1)
        feasible = need <= count_end[:, -1:]
        delta = np.arange(size)[:, None]
        row_off = delta * (n + 2)
        pos = np.searchsorted((count_end + row_off).ravel(), (need + row_off).ravel(), side="left")
        seg = np.minimum(pos.reshape(size, nb) - delta * (m + 1), m)
        u = np.maximum(starts[seg], np.searchsorted(c0, need + corr_n[delta, seg], side="left"))
        u = np.minimum(u, q)
        gain = np.maximum(suffix_in_seg[u] - corr_d[delta, seg], suffix_seg[delta, seg + 1])
        total = np.where(feasible & valid[tv][:, None], acc_a[tv][:, None] + gain, -1)
        r = size - 1 - np.argmax(total[::-1], axis=0)  # ties -> larger t
        value = total[r, cols]
        upd = (value >= 0) & (value >= best)
        best[upd], best_t[upd] = value[upd], t0 + r[upd]
        np.subtract.at(group_d, hj, dj)
        np.subtract.at(group_n, hj, 1)
    # t = n: everyone leaves at exit a
    value = np.where(ga * n <= limits, acc_a[n], -1)
    upd = (value >= 0) & (value >= best)
    best[upd], best_t[upd] = value[upd], n

    # recover T_b for each budget from its best t
    ta = np.full(nb, np.inf)
    tb = np.full(nb, np.inf)
    for t in np.unique(best_t[best >= 0]):
        which = np.flatnonzero((best_t == t) & (best >= 0))
        rest = order[t:]
        f = _prefix(np.bincount(h[rest], weights=d[rest], minlength=q).round().astype(np.int64))
        cnt = _prefix(np.bincount(h[rest], minlength=q))
        need = _ceil_need((ga * t + gc * (n - t) - limits[which]) / (gc - gb), n + 1)
        for j, nd in zip(which, need):
            u0 = int(np.searchsorted(cnt, nd, side="left"))
            tail = f[u0:]
            u = u0 + tail.shape[0] - 1 - int(np.argmax(tail[::-1]))  # ties -> larger u (cheaper)
            if acc_a[t] + f[u] != best[j]:
                raise RuntimeError("exact solver: recovered thresholds do not reach the optimum")
            ta[j] = sorted_a[t - 1] if t > 0 else np.inf
            tb[j] = -neg_values_b[u - 1] if u > 0 else np.inf
    return best, ta, tb
