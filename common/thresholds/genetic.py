"""The paper's genetic algorithm for "maximise accuracy subject to average GFLOPs <= budget".

The paper names the method but publishes no code; this is a standard, seeded GA:

- Genome: one integer gene per exit 0..K-2. Gene z of exit k picks a threshold from a grid of
  candidate values for that exit: z = 0 is +inf (the exit is closed), z = j >= 1 is the j-th largest
  candidate. The candidates are the distinct calibration scores of that exit, thinned to values at
  evenly spaced ranks when there are more than `grid_size` of them (default: as many as keep the lookup
  table below at most `max_table_cells` cells, 2^21: every distinct score for K = 2, ~1447 per exit
  for K = 3, ~127 for K = 4).
- Fitness: accuracy and expected GFLOPs of every genome come from lookup tables over the candidate
  grid, built once with multi-dimensional histograms and cumulative sums; they equal what the exit rule
  gives for those thresholds (tests check this).
- Budget constraint: feasibility first (Deb's rule, i.e. a penalty larger than any accuracy): a feasible
  genome always beats an infeasible one, feasible genomes are ranked by accuracy (ties: lower cost),
  infeasible ones by how far they exceed the budget. The genome "everyone leaves at exit 0" (cost of
  exit 0 <= any valid budget) is put into the first population, so every run ends feasible.
- Operators: tournament selection (size 3), uniform crossover (rate 0.9), Gaussian mutation of each
  gene with probability 0.5 and a step of `mutation_scale` x grid size, annealed geometrically to 0.2%,
  elitism (the best 2 survive). Population 64, 150 generations.
- All budgets evolve at once as independent populations in one array (B, population, K-1), driven by
  one `numpy.random.Generator(seed)`: the same seed gives the same thresholds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .budgets import within_budget, validate_budgets
from .curve import ThresholdCurve
from .evaluate import evaluate_thresholds
from .geometric import default_budgets
from .scores import ExitScores


@dataclass(frozen=True)
class GeneticConfig:
    population: int = 64
    generations: int = 150
    tournament: int = 3
    crossover_rate: float = 0.9
    mutation_rate: float = 0.5  # per gene
    mutation_scale: float = 0.25  # initial step std, as a fraction of the candidate grid
    final_mutation_scale: float = 0.002
    elite: int = 2
    grid_size: int | None = None  # candidates per exit; None: the most max_table_cells allows
    max_table_cells: int = 1 << 21
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0 or self.tournament < 1:
            raise ValueError(f"invalid GA sizes: {self}")
        if not 0 <= self.elite < self.population:
            raise ValueError(f"elite must be in [0, population), got {self.elite}")
        for name in ("crossover_rate", "mutation_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.grid_size is not None and self.grid_size < 1:
            raise ValueError(f"grid_size must be >= 1 or None, got {self.grid_size}")


def solve_genetic(scores: ExitScores, budgets=None, *, config: GeneticConfig | None = None,
                  **overrides) -> ThresholdCurve:
    """Run the GA for each budget (GFLOPs; default: the geometric schedule's costs)."""
    cfg = config or GeneticConfig()
    if overrides:
        cfg = GeneticConfig(**{**asdict(cfg), **overrides})
    budgets = default_budgets(scores) if budgets is None else validate_budgets(budgets, scores.gflops)
    tables = _Tables(scores, cfg)
    genes = _evolve(tables, budgets, cfg)
    thresholds = [tables.thresholds(z) for z in genes]
    evals = [evaluate_thresholds(scores, t) for t in thresholds]
    table_correct = tables.correct[tuple(genes.T)]
    if not np.array_equal(table_correct, [e.num_correct for e in evals]):
        raise RuntimeError("GA lookup table disagrees with the exit rule")
    info = {"exact": False, "grid_size": [int(x) for x in tables.sizes], **asdict(cfg)}
    return ThresholdCurve.from_thresholds("genetic", scores, budgets, thresholds, info=info, evaluations=evals)


class _Tables:
    """Candidate thresholds per exit and the accuracy / cost of every genome on the grid."""

    def __init__(self, scores: ExitScores, cfg: GeneticConfig):
        k_exits, n = scores.num_exits, scores.num_samples
        dims = k_exits - 1
        per_exit = cfg.grid_size or max(1, int(round(cfg.max_table_cells ** (1.0 / dims))) - 1)
        while (per_exit + 2) ** dims > 2 * cfg.max_table_cells and per_exit > 1:
            per_exit -= 1
        self.candidates = [_grid(scores.scores[k], per_exit) for k in range(dims)]
        self.sizes = np.array([c.shape[0] for c in self.candidates])
        # level[k][i]: smallest gene value whose threshold sample i passes at exit k (sizes+1: none)
        levels = [1 + c.shape[0] - np.searchsorted(c[::-1], scores.scores[k], side="right")
                  for k, c in enumerate(self.candidates)]
        shape = tuple(int(s) + 1 for s in self.sizes)
        correct = np.zeros(shape, dtype=np.int64)
        cost = np.zeros(shape, dtype=np.float64)
        for k in range(k_exits):
            last = k == k_exits - 1
            axes = levels[:k] if last else levels[:k + 1]
            counts = _orthant_counts(axes, self.sizes[:len(axes)], None, last)
            right = _orthant_counts(axes, self.sizes[:len(axes)], scores.correct[k], last)
            pad = (slice(None),) * len(axes) + (None,) * (dims - len(axes))
            correct += right[pad]
            cost += scores.gflops[k] * counts[pad]
        self.correct = correct
        self.cost = cost / n  # expected GFLOPs
        self.n = n
        self.g_max = float(scores.gflops[-1])

    def thresholds(self, genes: np.ndarray) -> np.ndarray:
        t = [np.inf if z == 0 else float(c[z - 1]) for z, c in zip(genes, self.candidates)]
        return np.array(t + [-np.inf])

    def fitness(self, pop: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        """Higher is better: feasible -> correct + [0, 0.5) (cheaper is better); infeasible -> < -1."""
        idx = tuple(np.moveaxis(pop, -1, 0))
        correct, cost = self.correct[idx], self.cost[idx]
        b = budgets[:, None]
        feasible = within_budget(cost, b)
        return np.where(feasible, correct + 0.5 * (1.0 - cost / (self.g_max * 1.0001)),
                        -1.0 - (cost - b) / self.g_max)


def _grid(s: np.ndarray, size: int) -> np.ndarray:
    """Distinct scores in descending order, thinned to values at evenly spaced ranks if too many."""
    distinct = np.unique(s)[::-1]
    if distinct.shape[0] <= size:
        return distinct
    ranked = np.sort(s)[::-1]
    return np.unique(ranked[np.linspace(0, s.shape[0] - 1, size).round().astype(int)])[::-1]


def _orthant_counts(levels, sizes, weights, last: bool) -> np.ndarray:
    """Over genes z: sum of weights of samples with level_j > z_j for the leading axes and, unless `last`,
    level_k <= z_k on the final axis (the samples that leave exactly at that exit)."""
    dims = tuple(int(s) + 2 for s in sizes)
    flat = np.ravel_multi_index(tuple(levels), dims)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    hist = np.rint(np.bincount(flat, weights=w, minlength=int(np.prod(dims)))).astype(np.int64).reshape(dims)
    for axis, size in enumerate(sizes):
        cum = np.cumsum(hist, axis=axis)  # sum over level <= z
        keep = [slice(None)] * hist.ndim
        keep[axis] = slice(0, int(size) + 1)
        if last or axis < len(sizes) - 1:
            total = hist.sum(axis=axis, keepdims=True)
            hist = (total - cum)[tuple(keep)]  # level > z
        else:
            hist = cum[tuple(keep)]
    return hist


def _evolve(tables: _Tables, budgets: np.ndarray, cfg: GeneticConfig) -> np.ndarray:
    """Best genome (B, K-1) per budget."""
    rng = np.random.default_rng(cfg.seed)
    nb, p, dims = budgets.shape[0], cfg.population, tables.sizes.shape[0]
    top = tables.sizes  # gene range [0, size]
    pop = np.floor(rng.random((nb, p, dims)) * (top + 1)).astype(np.int64)
    pop[:, 0, :] = top  # lowest thresholds: everyone leaves at exit 0, feasible for every budget
    fit = tables.fitness(pop, budgets)
    gens = cfg.generations
    for gen in range(gens):
        frac = gen / max(gens - 1, 1)
        scale = cfg.mutation_scale * (cfg.final_mutation_scale / cfg.mutation_scale) ** frac
        contenders = rng.integers(0, p, size=(nb, p * 2 * cfg.tournament))
        cfit = np.take_along_axis(fit, contenders, axis=1).reshape(nb, p * 2, cfg.tournament)
        winners = np.take_along_axis(contenders.reshape(nb, p * 2, cfg.tournament),
                                     cfit.argmax(axis=2)[..., None], axis=2)[..., 0]
        parents = np.take_along_axis(pop, winners[..., None], axis=1).reshape(nb, p, 2, dims)
        swap = (rng.random((nb, p, dims)) < 0.5) & (rng.random((nb, p, 1)) < cfg.crossover_rate)
        child = np.where(swap, parents[:, :, 1], parents[:, :, 0])
        mutate = rng.random((nb, p, dims)) < cfg.mutation_rate
        step = rng.normal(size=(nb, p, dims)) * scale * (top + 1)
        child = np.where(mutate, np.clip(np.rint(child + step), 0, top), child).astype(np.int64)
        if cfg.elite:
            elite = np.argsort(-fit, axis=1, kind="stable")[:, :cfg.elite]
            child[:, :cfg.elite] = np.take_along_axis(pop, elite[..., None], axis=1)
        pop = child
        fit = tables.fitness(pop, budgets)
    best = fit.argmax(axis=1)
    return pop[np.arange(nb), best]
