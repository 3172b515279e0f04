"""`reports/summary.json`: the run's headline numbers for `dvc metrics` / `dvc exp show` (2 decimals).

Layout (keys stable): {model: {setup: {method: {...}}, "avg": {method: {...}}, "zeroshot_avg",
"finetuned_avg"}, "avg": {method: {...}}}; a method's entry holds baseline, recommended,
weaving_<pooling>_<pool_over>, gain (weaving_avg_all - baseline), oracle_single, oracle_single_lam,
oracle_per_task, and where the weave stage computed them, bootstrap intervals over test images
(`baseline_ci`, `weaving_avg_all_ci`, `gain_ci`: [low, high]). The "avg" entries are means over
setups (per model) and over setups and models (top); intervals are not averaged.
A top-level "seeds" lists the seeds the numbers come from.

Several seeds (`seeds_summary`): every number is the mean over seeds of the per-seed summaries
(each computed as above), and beside each key K stand `K_std` (sample standard deviation over
seeds, n - 1) and `K_seeds_ci` ([low, high], the 95% t-interval of the mean over seeds,
`weaving.report.seeds`); `oracle_single_lam` too. The bootstrap keys `baseline_ci`,
`weaving_avg_all_ci` and `gain_ci` are per seed (over that seed's test images) and are left out.
With one seed the layout and values are the single run's, plus "seeds".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from statistics import fmean
from typing import Any

from weaving.report.load import RunMetrics, WeaveMetrics
from weaving.report.seeds import check_same_layout, named, seed_stats


def method_numbers(r: WeaveMetrics, poolings: list[str], pool_overs: list[str]) -> dict[str, float]:
    """One method's task-averaged accuracies in one setup (unrounded)."""
    lam, single = r.oracle_single()
    numbers = {"baseline": r.baseline_avg, "recommended": r.recommended_avg}
    for o in pool_overs:
        for p in poolings:
            numbers[f"weaving_{p}_{o}"] = r.weaving_avg(p, o)
    numbers["gain"] = numbers["weaving_avg_all"] - numbers["baseline"]
    numbers["oracle_single"] = single
    numbers["oracle_single_lam"] = lam
    numbers["oracle_per_task"] = fmean(r.oracle_per_task().values())
    for name in r.extensions or {}:
        numbers[f"beyond_{name}"] = r.extension_avg(name)
        if "weaving_avg_all" in numbers:
            numbers[f"beyond_{name}_gain_over_lam_only"] = numbers[f"beyond_{name}"] - numbers["weaving_avg_all"]
    if r.intervals is not None and "avg" in r.intervals.weaving and "all" in r.intervals.weaving["avg"]:
        for key, interval in (("baseline_ci", r.intervals.baseline), ("weaving_avg_all_ci", r.intervals.weaving["avg"]["all"]),
                              ("gain_ci", r.intervals.gain["avg"]["all"])):
            numbers[key] = [interval.low, interval.high]
    return numbers


def _mean_entries(entries: list[dict[str, float]]) -> dict[str, float]:
    return {k: fmean(e[k] for e in entries) for k in entries[0] if k != "oracle_single_lam" and not k.endswith("_ci")}


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 2)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def summary(run: RunMetrics) -> dict[str, Any]:
    """One run's summary, rounded to 2 decimals (without "seeds")."""
    return _round(_summary(run))


def _summary(run: RunMetrics) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_method_all: dict[str, list[dict[str, float]]] = {m: [] for m in run.methods}
    for model in run.models:
        entry: dict[str, Any] = {}
        for setup in run.setups:
            entry[setup] = {}
            for method in run.methods:
                numbers = method_numbers(run.get(model, setup, method), run.poolings, run.pool_overs)
                entry[setup][method] = numbers
                per_method_all[method].append(numbers)
        entry["avg"] = {m: _mean_entries([entry[s][m] for s in run.setups]) for m in run.methods}
        ref = run.reference[model]
        entry["zeroshot_avg"] = fmean(ref.zeroshot.values()) if ref.zeroshot else None
        entry["finetuned_avg"] = fmean(ref.finetuned.values()) if ref.finetuned else None
        out[model] = entry
    out["avg"] = {m: _mean_entries(v) for m, v in per_method_all.items()}
    return out


def _aggregate(trees: list[Any]) -> Any:
    """The per-seed summaries `trees` (same layout) as one: each number's mean with `_std` and
    `_seeds_ci` beside it; the per-seed bootstrap `_ci` keys left out."""
    out: dict[str, Any] = {}
    for key, value in trees[0].items():
        if key.endswith("_ci"):
            continue
        values = [t[key] for t in trees]
        if isinstance(value, dict):
            out[key] = _aggregate(values)
        elif any(v is None for v in values):
            out[key] = out[f"{key}_std"] = out[f"{key}_seeds_ci"] = None
        else:
            stats = seed_stats(values)
            out[key], out[f"{key}_std"], out[f"{key}_seeds_ci"] = stats.mean, stats.std, stats.ci
    return out


def seeds_summary(runs: Mapping[int, RunMetrics]) -> dict[str, Any]:
    """The summary of one run per seed (`runs`: seed -> run, in order), rounded to 2 decimals,
    with a top-level "seeds". One seed: `summary(run)` plus "seeds"."""
    check_same_layout(runs)
    seeds = list(runs)
    if len(seeds) == 1:
        return {**summary(runs[seeds[0]]), "seeds": named(seeds)}
    return {**_round(_aggregate([_summary(runs[s]) for s in seeds])), "seeds": seeds}


def summary_json(runs: Mapping[int, RunMetrics]) -> str:
    return json.dumps(seeds_summary(runs), indent=2) + "\n"
