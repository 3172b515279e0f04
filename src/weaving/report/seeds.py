"""Replicate seeds in the report: one run per seed aggregated into means, spreads and intervals.

The pipeline may run the fine-tune, sequential and weave stages once per seed (params `seeds`);
the report reads one `RunMetrics` per seed and aggregates them here. For values x_1..x_n of one
number over n seeds:

- mean: m = (x_1 + ... + x_n) / n;
- standard deviation: the sample one, s = sqrt(sum (x_i - m)^2 / (n - 1));
- 95% interval: the Student t-interval of the mean, m ± t_{0.975, n-1} · s / sqrt(n).

With one seed there is no spread: the standard deviation and the interval are None (null in
JSON), never 0. A gain counts as a gain, with several seeds, only when its interval excludes
zero (its low end, rounded to 2 decimals, > 0: `counts_as_gain`); with one seed its point
estimate decides (rounded to 2 decimals, > 0), as it always did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any, TypeVar

from weaving.metrics import (
    BootstrapInterval,
    ContinualReference,
    ReferenceMetrics,
    SimilarityMatrix,
    SimilarityMetrics,
    WeaveExtension,
    WeaveMetrics,
)
from weaving.report.load import MetricsError, RunMetrics
from weaving.report.tables import SETUP_SHORT, Label, Stat, Table, method_cell

LEVEL = 0.95
"""Coverage of the intervals over seeds."""

__all__ = ["LEVEL", "SeedStats", "seed_stats", "t_quantile", "counts_as_gain", "mean_run", "check_same_layout", "named",
           "seeds_text", "seeds_table", "MEAN_NOTE"]


@dataclass(frozen=True)
class SeedStats:
    """One number over seeds: its mean, sample standard deviation and 95% t-interval (None for one seed)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def ci(self) -> list[float] | None:
        return None if self.low is None or self.high is None else [self.low, self.high]


def t_quantile(df: int, level: float = LEVEL) -> float:
    """t_{(1 + level) / 2, df}: the two-sided `level` quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t as student_t  # imported when first needed (several seeds)

    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    return float(student_t.ppf((1 + level) / 2, df))


def seed_stats(values: Sequence[float]) -> SeedStats:
    """Mean, sample standard deviation (n - 1) and the t-interval mean ± t_{0.975, n-1} · std / sqrt(n)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to aggregate over seeds")
    mean = fmean(values)
    if len(values) == 1:
        return SeedStats(1, mean, None, None, None)
    std = stdev(values)
    half = t_quantile(len(values) - 1) * std / math.sqrt(len(values))
    return SeedStats(len(values), mean, std, mean - half, mean + half)


def counts_as_gain(per_seed: Sequence[float]) -> bool:
    """Whether a gain over seeds counts as one: with several seeds its 95% interval excludes zero
    (low, rounded to 2 decimals as the point estimate is with one seed, > 0: float noise around an
    exact 0 is no gain); with one seed its value rounded to 2 decimals is > 0."""
    stats = seed_stats(per_seed)
    if stats.low is None:
        return round(stats.mean, 2) > 0
    return round(stats.low, 2) > 0


def seeds_text(seeds: Sequence[int]) -> str:
    """The report's line on the seeds (empty for one seed, whose report reads as it always did)."""
    if len(seeds) < 2:
        return ""
    return (f"Seeds: {', '.join(str(s) for s in seeds)} (means over seeds; ± one standard deviation; "
            f"{LEVEL:.0%} t-intervals of the mean).")


def named(seeds: Sequence[int | None]) -> list[int]:
    """The seeds a report names: all of them but None, which keys a run without replicate folders
    (its seed unknown)."""
    return [seed for seed in seeds if seed is not None]


def check_same_layout(runs: Mapping[int, RunMetrics]) -> None:
    """Raise `MetricsError` naming every difference between the first seed's run and another's:
    models, setups, methods, poolings, pool_overs, and per weave record its tasks, lambdas and
    variants beyond lam, per model its reference and similarity labels."""
    if not runs:
        raise ValueError("no runs given (one RunMetrics per seed)")
    seeds = list(runs)
    first_seed, first = seeds[0], runs[seeds[0]]
    problems: list[str] = []
    for seed in seeds[1:]:
        run = runs[seed]
        where = f"seed {seed} vs seed {first_seed}"
        for name in ("models", "setups", "methods", "poolings", "pool_overs"):
            if getattr(run, name) != getattr(first, name):
                problems.append(f"{where}: {name} {getattr(run, name)} != {getattr(first, name)}")
        if run.weave.keys() != first.weave.keys():
            problems.append(f"{where}: weave records {sorted(run.weave)} != {sorted(first.weave)}")
            continue
        for key, record in run.weave.items():
            other = first.weave[key]
            for name in ("tasks", "lambdas", "baseline_lam", "recommended_lam"):
                if getattr(record, name) != getattr(other, name):
                    problems.append(f"{where}: {'/'.join(key)} {name} {getattr(record, name)} != {getattr(other, name)}")
            if sorted(record.extensions or {}) != sorted(other.extensions or {}):
                problems.append(f"{where}: {'/'.join(key)} extensions {sorted(record.extensions or {})} != "
                                f"{sorted(other.extensions or {})}")
        for model in first.models:
            if model not in run.reference or model not in run.similarity:
                continue
            a, b = run.reference[model], first.reference[model]
            for name in ("zeroshot", "finetuned", "cl"):
                if sorted(getattr(a, name)) != sorted(getattr(b, name)):
                    problems.append(f"{where}: {model} reference {name} tasks differ")
            sa, sb = run.similarity[model], first.similarity[model]
            if sa.individual.labels != sb.individual.labels or \
                    {k: v.labels for k, v in sa.sequential.items()} != {k: v.labels for k, v in sb.sequential.items()}:
                problems.append(f"{where}: {model} similarity labels differ")
    if problems:
        head = f"the runs of seeds {seeds} cannot be aggregated ({len(problems)} difference(s)):"
        raise MetricsError("\n  ".join([head, *problems]))


K = TypeVar("K")


def _mean_map(maps: Sequence[Mapping[K, float]]) -> dict[K, float]:
    return {k: fmean(m[k] for m in maps) for k in maps[0]}


def _mean_interval(intervals: Sequence[BootstrapInterval]) -> BootstrapInterval:
    return BootstrapInterval(estimate=fmean(i.estimate for i in intervals), low=fmean(i.low for i in intervals),
                             high=fmean(i.high for i in intervals))


def _mean_weave(records: Sequence[WeaveMetrics]) -> WeaveMetrics:
    first = records[0]
    data: dict[str, Any] = {
        "baseline": _mean_map([r.baseline for r in records]),
        "recommended": _mean_map([r.recommended for r in records]),
        "sweep": {t: [fmean(r.sweep[t][i] for r in records) for i in range(len(first.lambdas))] for t in first.sweep},
        "weaving": {p: {o: _mean_map([r.weaving[p][o] for r in records]) for o in by_over}
                    for p, by_over in first.weaving.items()},
        "intervals": None,
    }
    if first.extensions is not None:
        data["extensions"] = {
            name: WeaveExtension(space=v.space, pooling=v.pooling, pooling_params=v.pooling_params,
                                 accuracy=_mean_map([(r.extensions or {})[name].accuracy for r in records]))
            for name, v in first.extensions.items()}
    return first.model_copy(update=data)


def _mean_matrix(matrices: Sequence[SimilarityMatrix]) -> SimilarityMatrix:
    n = len(matrices[0].labels)
    return SimilarityMatrix(labels=matrices[0].labels,
                            matrix=[[fmean(m.matrix[i][j] for m in matrices) for j in range(n)] for i in range(n)])


def _mean_reference(refs: Sequence[ReferenceMetrics]) -> ReferenceMetrics:
    return refs[0].model_copy(update={
        "zeroshot": _mean_map([r.zeroshot for r in refs]),
        "finetuned": _mean_map([r.finetuned for r in refs]),
        "cl": {b: ContinualReference(zeroshot=fmean(r.cl[b].zeroshot for r in refs),
                                     sequential_final=fmean(r.cl[b].sequential_final for r in refs))
               for b in refs[0].cl}})


def _mean_similarity(sims: Sequence[SimilarityMetrics]) -> SimilarityMetrics:
    return sims[0].model_copy(update={
        "individual": _mean_matrix([s.individual for s in sims]),
        "sequential": {b: _mean_matrix([s.sequential[b] for s in sims]) for b in sims[0].sequential}})


def mean_run(runs: Mapping[int, RunMetrics]) -> RunMetrics:
    """One run whose every accuracy is the mean over the seeds' runs (`runs`: seed -> run, in order).

    Averaged per task (and per lam): each weave record's baseline, recommended, sweep, weaving
    and extensions' accuracies; each reference's zero-shot, fine-tuned and continual accuracies;
    each similarity matrix's cosines. The bootstrap `intervals` of a weave record are per seed
    (over that seed's test images) and are dropped (None) in the mean. With one seed the run
    itself is returned, unchanged. Raises `MetricsError` (`check_same_layout`) when the seeds'
    runs differ in models, setups, methods, poolings, tasks, lambdas or variants.
    """
    check_same_layout(runs)
    all_runs = list(runs.values())
    if len(all_runs) == 1:
        return all_runs[0]
    first = all_runs[0]
    return RunMetrics(
        models=list(first.models), setups=list(first.setups), methods=list(first.methods),
        poolings=list(first.poolings), pool_overs=list(first.pool_overs),
        weave={key: _mean_weave([r.weave[key] for r in all_runs]) for key in first.weave},
        reference={m: _mean_reference([r.reference[m] for r in all_runs]) for m in first.reference},
        similarity={m: _mean_similarity([r.similarity[m] for r in all_runs]) for m in first.similarity})


MEAN_NOTE = ("Several seeds: every number in this table is the mean over seeds {seeds} (of each accuracy per task, "
             "then averaged as stated); table 'seeds' gives the spread.")


def _stat(values: Sequence[float]) -> Stat:
    stats = seed_stats(values)
    return Stat(stats.mean, stats.std, stats.low, stats.high)


def seeds_table(runs: Mapping[int, RunMetrics]) -> Table:
    """"Replicates": per method and setup (mean over models and tasks) and on average over setups,
    the baseline, Weight Weaving (avg over A*) and their difference, each as mean ± std [95% t-interval]
    over seeds, and the number of seeds."""
    check_same_layout(runs)
    seeds = list(runs)
    first = runs[seeds[0]]
    table = Table("seeds", f"Replicates: baseline vs Weight Weaving over seeds {', '.join(map(str, seeds))} "
                           "(mean ± std [95% interval])",
                  ["Method", "Setup", "Seeds", "Baseline (λ = 1)", "Weight Weaving (avg, A*)", "Δ"],
                  ["method", "setup", "seeds", "baseline", "weaving", "gain"])

    def per_seed(method: str, setups: list[str]) -> tuple[list[float], list[float]]:
        base = [fmean(r.get(m, s, method).baseline_avg for s in setups for m in first.models) for r in runs.values()]
        woven = [fmean(r.get(m, s, method).weaving_avg("avg", "all") for s in setups for m in first.models)
                 for r in runs.values()]
        return base, woven

    for method in first.methods:
        for setup, label in [*((s, Label(SETUP_SHORT[s], s)) for s in first.setups), ("avg", Label("Avg", "avg"))]:
            base, woven = per_seed(method, first.setups if setup == "avg" else [setup])
            table.rows.append([method_cell(method), label, str(len(seeds)), _stat(base), _stat(woven),
                               _stat([w - b for w, b in zip(woven, base)])])
    table.notes.append(f"Each seed's value is the mean over the setup's tasks and the models (Avg: and over setups); "
                       f"then mean ± sample standard deviation (n − 1) over the {len(seeds)} seeds and the "
                       f"{LEVEL:.0%} t-interval of the mean, mean ± t(0.975, n − 1) · std / √n. A gain counts as a "
                       f"gain in the claims only when its interval excludes 0. CSV: columns <name>_mean, _std, "
                       f"_ci_low, _ci_high.")
    return table
