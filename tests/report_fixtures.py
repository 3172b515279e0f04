"""Synthetic metrics files for the report's tests (docs/contracts.md, "Metrics").

`make_run` builds every record in memory from a seed and a few knobs that decide what the
paper's claims should conclude; tests may edit the records before `SyntheticRun.write`.
Accuracy curves over lam are tents: `peak - slope * |lam - best lam of the task|`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SETUPS = ("mtl", "cl", "dg")
RECOMMENDED_LAM = {"task_arithmetic": 0.3, "dare": 0.3, "breadcrumbs": 0.3, "magmax": 0.5,
                   "ties": 1.0, "pcb": 1.0, "tsv": 1.0, "iso_c": 1.0}
MTL_SPACE = {"ties": (0.1, 1.5), "pcb": (0.1, 2.5), "tsv": (0.5, 2.0), "iso_c": (0.1, 2.0)}
DEFAULT_TASKS = {
    "mtl": ["mnist", "fashion_mnist", "optdigits", "ising", "cahn_hilliard", "textures"],
    "cl": ["mnist-s2", "mnist-s5", "fashion_mnist-s2", "fashion_mnist-s5"],
    "dg": ["mnist", "fashion_mnist", "optdigits", "ising", "cahn_hilliard", "textures"],
}
POOLINGS = ("avg", "random", "magmax")
POOL_OVERS = ("all", "augmented")

PerRecord = float | Callable[[str, str, str], float]
BestLambda = Callable[[str, str, str, int, list], float]


def search_space(setup: str, method: str) -> list[float]:
    start, stop = MTL_SPACE.get(method, (0.1, 1.0)) if setup == "mtl" else (0.1, 1.0)
    n = int(round((stop - start) / 0.1)) + 1
    return [round(start + 0.1 * i, 10) for i in range(n)]


def _value(knob: PerRecord, model: str, setup: str, method: str) -> float:
    return knob(model, setup, method) if callable(knob) else float(knob)


def random_best_lambda(rng: random.Random) -> BestLambda:
    return lambda model, setup, method, i, lambdas: rng.choice(lambdas)


def spread_best_lambda(model: str, setup: str, method: str, i: int, lambdas: list) -> float:
    """Every task its own best lam (as spread as the search space allows)."""
    return lambdas[(3 * i + 1) % len(lambdas)]


def concentrated_best_lambda(model: str, setup: str, method: str, i: int, lambdas: list) -> float:
    """Every task best at the lam closest to 1."""
    return min(lambdas, key=lambda x: abs(x - 1.0))


@dataclass
class SyntheticRun:
    models: list[str]
    setups: list[str]
    methods: list[str]
    weave: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    reference: dict[str, dict] = field(default_factory=dict)
    similarity: dict[str, dict] = field(default_factory=dict)

    def write(self, root: Path, seed: int | None = None) -> Path:
        """Write every file under `root` (the `metrics/` folder) and return `root`: under `<model>/`, or
        with `seed` under `<model>/seed<seed>/` as the pipeline's replicate `seed` (params `seeds`)."""
        def folder(model: str) -> Path:
            return root / model if seed is None else root / model / f"seed{seed}"

        for (model, setup, method), record in self.weave.items():
            path = folder(model) / "weave" / method / f"{setup}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
        for model, record in self.reference.items():
            folder(model).mkdir(parents=True, exist_ok=True)
            (folder(model) / "reference.json").write_text(json.dumps(record, indent=1))
        for model, record in self.similarity.items():
            folder(model).mkdir(parents=True, exist_ok=True)
            (folder(model) / "similarity.json").write_text(json.dumps(record, indent=1))
        return root


def _tent(peak: float, best: float, lam: float, slope: float) -> float:
    return round(min(100.0, max(0.0, peak - slope * abs(lam - best))), 2)


def make_run(models: Sequence[str] = ("tiny-clip",), setups: Sequence[str] = SETUPS,
             methods: Sequence[str] = ("ties", "magmax", "iso_c"), *, seed: int = 0,
             gain: PerRecord = 3.0, random_offset: PerRecord = 0.2, magmax_offset: PerRecord = -10.0,
             augmented_offset: PerRecord = -1.0, best_lambda: BestLambda | None = None,
             slope: float = 20.0, tasks: dict[str, list[str]] | None = None) -> SyntheticRun:
    """A run whose Weight Weaving (avg over A*) sits `gain` points above the baseline on every task.

    Other poolings sit at fixed offsets from avg over A*; `best_lambda(model, setup, method,
    task index, lambdas)` places each task's best lam (default: drawn from the seed).
    """
    rng = random.Random(seed)
    best_lambda = best_lambda or random_best_lambda(rng)
    tasks = tasks or DEFAULT_TASKS
    run = SyntheticRun(list(models), list(setups), list(methods))
    for model in models:
        for setup in setups:
            for method in methods:
                lambdas = search_space(setup, method)
                names = tasks[setup]
                peaks = {t: rng.uniform(60.0, 90.0) for t in names}
                bests = {t: best_lambda(model, setup, method, i, lambdas) for i, t in enumerate(names)}

                def at(lam: float, t: str, peaks: dict = peaks, bests: dict = bests) -> float:
                    return _tent(peaks[t], bests[t], lam, slope)

                baseline = {t: at(1.0, t) for t in names}
                g = _value(gain, model, setup, method)
                woven_all = {t: round(min(100.0, max(0.0, baseline[t] + g)), 2) for t in names}
                offsets = {("avg", "all"): 0.0, ("random", "all"): _value(random_offset, model, setup, method),
                           ("magmax", "all"): _value(magmax_offset, model, setup, method)}
                weaving: dict = {p: {} for p in POOLINGS}
                aug = _value(augmented_offset, model, setup, method)
                for p in POOLINGS:
                    for o in POOL_OVERS:
                        shift = offsets[(p, "all")] + (aug if o == "augmented" else 0.0)
                        weaving[p][o] = {t: round(min(100.0, max(0.0, woven_all[t] + shift)), 2) for t in names}
                run.weave[(model, setup, method)] = {
                    "model": model, "setup": setup, "method": method, "hparams": {},
                    "lambdas": lambdas, "recommended_lam": RECOMMENDED_LAM.get(method, 1.0), "baseline_lam": 1.0,
                    "tasks": list(names), "baseline": baseline,
                    "recommended": {t: at(RECOMMENDED_LAM.get(method, 1.0), t) for t in names},
                    "sweep": {t: [at(lam, t) for lam in lambdas] for t in names},
                    "weaving": weaving,
                }
        individual = DEFAULT_TASKS["mtl"]
        run.reference[model] = {
            "model": model,
            "zeroshot": {t: round(rng.uniform(10, 40), 2) for t in individual},
            "finetuned": {t: round(rng.uniform(85, 99), 2) for t in individual},
            "cl": {b: {"zeroshot": round(rng.uniform(10, 40), 2), "sequential_final": round(rng.uniform(40, 70), 2)}
                   for b in DEFAULT_TASKS["cl"]},
        }
        run.similarity[model] = {
            "individual": {"labels": individual, "matrix": _similarity(rng, len(individual), base=0.05)},
            "sequential": {b: {"labels": [f"{b}/split_{i}" for i in range(n)], "matrix": _similarity(rng, n, base=0.7)}
                           for b, n in (("mnist-s2", 2), ("mnist-s5", 5))},
        }
    return run


def _similarity(rng: random.Random, n: int, base: float) -> list[list[float]]:
    m = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            m[i][j] = m[j][i] = round(base + rng.uniform(-0.05, 0.05), 4)
    return m
