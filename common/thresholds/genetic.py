"""The paper's genetic algorithm for "maximise accuracy subject to average GFLOPs <= budget".

The paper names the method but publishes no code; this is a standard, seeded GA:

- Genome: one integer gene per exit 0..K-2, an index into the candidate grid of `tables.ThresholdTables`
  (z = 0: the exit is closed; z = j >= 1: the j-th largest candidate score; at most `max_table_cells`
  cells, 2^21: every distinct score for K = 2, ~1447 per exit for K = 3, ~127 for K = 4).
- Fitness: accuracy and expected GFLOPs of every genome come from those lookup tables, built once; they
  equal what the exit rule gives for those thresholds (tests check this).
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
from .tables import ThresholdTables


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
    tables = ThresholdTables(scores, cfg.grid_size, cfg.max_table_cells)
    genes = _evolve(tables, budgets, cfg)
    thresholds = [tables.thresholds(z) for z in genes]
    evals = [evaluate_thresholds(scores, t) for t in thresholds]
    table_correct = tables.correct[tuple(genes.T)]
    if not np.array_equal(table_correct, [e.num_correct for e in evals]):
        raise RuntimeError("GA lookup table disagrees with the exit rule")
    info = {"exact": False, "grid_size": [int(x) for x in tables.sizes], **asdict(cfg)}
    return ThresholdCurve.from_thresholds("genetic", scores, budgets, thresholds, info=info, evaluations=evals)


def _fitness(tables: ThresholdTables, pop: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Higher is better: feasible -> correct + [0, 0.5) (cheaper is better); infeasible -> < -1."""
    idx = tuple(np.moveaxis(pop, -1, 0))
    correct, cost = tables.correct[idx], tables.cost[idx]
    b = budgets[:, None]
    g_max = tables.gflops[-1]
    feasible = within_budget(cost, b)
    return np.where(feasible, correct + 0.5 * (1.0 - cost / (g_max * 1.0001)), -1.0 - (cost - b) / g_max)


def _evolve(tables: ThresholdTables, budgets: np.ndarray, cfg: GeneticConfig) -> np.ndarray:
    """Best genome (B, K-1) per budget."""
    rng = np.random.default_rng(cfg.seed)
    nb, p, dims = budgets.shape[0], cfg.population, tables.sizes.shape[0]
    top = tables.sizes  # gene range [0, size]
    pop = np.floor(rng.random((nb, p, dims)) * (top + 1)).astype(np.int64)
    pop[:, 0, :] = top  # lowest thresholds: everyone leaves at exit 0, feasible for every budget
    fit = _fitness(tables, pop, budgets)
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
        fit = _fitness(tables, pop, budgets)
    best = fit.argmax(axis=1)
    return pop[np.arange(nb), best]
