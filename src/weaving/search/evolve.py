"""The evolutionary search over grid genes, on pymoo (Blank & Deb, 2020).

MERGE3's setting (mergenetic's `end2end.py`): a genetic algorithm with population 25 for
7 generations, integer random sampling, simulated binary crossover (SBX) and polynomial
mutation (PM) with pymoo's default rates, duplicates eliminated. Here the genes are grid
levels `0 .. levels - 1` and both operators round their children back onto the grid
(`RoundingRepair`); the reference divides its 0..10 genes by 10 but lets SBX/PM leave
the grid. `algorithm="nsga2"` runs NSGA-II with one objective per entry of the fitness
vector (e.g. one per task).

pymoo minimises; `evolve` maximises the fitness it is given (it negates internally).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from weaving.errors import ParamError, choices

ALGORITHMS: tuple[str, ...] = ("ga", "nsga2")


@dataclass
class Evaluation:
    """One fitness call: the generation (1-based), the levels, the fitness vector (to maximise)."""

    generation: int
    levels: list[int]
    fitness: list[float]


@dataclass
class EvolveResult:
    """`best_levels` and `best_fitness` (for NSGA-II: the final non-dominated member of highest
    mean fitness), every evaluation, and per generation the best-so-far, the generation's
    mean and best, and its wall time in seconds (`seconds`)."""

    best_levels: list[int]
    best_fitness: list[float]
    evaluations: list[Evaluation] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)


def _check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParamError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def evolve(
    fitness: Callable[[list[int]], Sequence[float]],
    levels: Sequence[int],
    *,
    seed: int,
    population: int = 25,
    generations: int = 7,
    algorithm: str = "ga",
    num_objectives: int = 1,
    progress: bool = False,
) -> EvolveResult:
    """Maximise `fitness(levels) -> [f_1 .. f_K]` over integer genes `0 <= x_i < levels[i]`.

    `algorithm="ga"` maximises `mean(f)` (pymoo GA); `"nsga2"` maximises the `K =
    num_objectives` entries together (pymoo NSGA-II). `generations` counts the initial
    population as the first generation (pymoo's `n_gen`), so about `population *
    generations` fitness calls. The pymoo algorithm's own `numpy.random.Generator` is
    seeded with `seed`; no global random state is used.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.core.callback import Callback
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    if algorithm not in ALGORITHMS:
        raise ParamError(f"unknown search algorithm {algorithm!r}; valid: {choices(ALGORITHMS)}")
    population = _check_positive_int(population, "population", 2)
    generations = _check_positive_int(generations, "generations", 1)
    num_objectives = _check_positive_int(num_objectives, "num_objectives", 1)
    if algorithm == "nsga2" and num_objectives < 2:
        raise ParamError("nsga2 needs num_objectives >= 2 (one per task); use algorithm='ga' for one")
    levels = [_check_positive_int(v, f"levels[{i}]", 2) for i, v in enumerate(levels)]
    if not levels:
        raise ParamError("evolve needs at least one gene")

    result = EvolveResult(best_levels=[], best_fitness=[])
    state = {"generation": 1, "clock": time.perf_counter()}
    bar = tqdm(total=generations, desc=f"evolve ({algorithm})", unit="gen", file=sys.stderr, disable=not progress)

    class _Problem(ElementwiseProblem):
        def __init__(self) -> None:
            n_obj = 1 if algorithm == "ga" else num_objectives
            super().__init__(n_var=len(levels), n_obj=n_obj, xl=np.zeros(len(levels)),
                             xu=np.asarray(levels, dtype=float) - 1, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            genes = [round(float(v)) for v in np.asarray(x).reshape(-1)]
            values = [float(v) for v in fitness(genes)]
            if len(values) != num_objectives:
                raise ParamError(f"fitness returned {len(values)} values, expected num_objectives={num_objectives}")
            result.evaluations.append(Evaluation(state["generation"], genes, values))
            out["F"] = [-float(np.mean(values))] if algorithm == "ga" else [-v for v in values]

    class _Trace(Callback):
        def notify(self, algo) -> None:
            now = time.perf_counter()
            current = [e for e in result.evaluations if e.generation == state["generation"]]
            so_far = max(result.evaluations, key=lambda e: float(np.mean(e.fitness)))
            result.generations.append({
                "generation": state["generation"],
                "evaluations": len(current),
                "best_so_far": float(np.mean(so_far.fitness)),
                "best_so_far_levels": list(so_far.levels),
                "generation_mean": float(np.mean([np.mean(e.fitness) for e in current])) if current else float("nan"),
                "generation_best": float(max(np.mean(e.fitness) for e in current)) if current else float("nan"),
                "seconds": now - state["clock"],
            })
            state["clock"] = now
            state["generation"] += 1
            bar.update()

    operators = {
        "sampling": IntegerRandomSampling(),
        "crossover": SBX(repair=RoundingRepair(), vtype=float),
        "mutation": PM(repair=RoundingRepair(), vtype=float),
        "eliminate_duplicates": True,
    }
    method = GA(pop_size=population, **operators) if algorithm == "ga" else NSGA2(pop_size=population, **operators)
    try:
        outcome = minimize(_Problem(), method, ("n_gen", generations), seed=int(seed), callback=_Trace(), verbose=False)
    finally:
        bar.close()
    if algorithm == "ga":
        best = max(result.evaluations, key=lambda e: float(np.mean(e.fitness)))
    else:
        front = {tuple(round(float(v)) for v in row) for row in np.atleast_2d(outcome.X)}
        members = [e for e in result.evaluations if tuple(e.levels) in front]
        best = max(members, key=lambda e: float(np.mean(e.fitness)))
    result.best_levels = list(best.levels)
    result.best_fitness = list(best.fitness)
    return result
