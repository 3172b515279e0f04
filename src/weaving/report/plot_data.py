"""The data behind every figure, as long-format rows (one observation per row).

Written as CSV under `reports/plots/`; the figures draw from these same rows. `dvc_series`
splits them into one small CSV per series so `dvc plots` (one plot per file) can draw them.
With several seeds the rows are the mean run's (`weaving.report.seeds.mean_run`);
accuracy_vs_lambda.csv and baseline_vs_weaving.csv gain `accuracy_std` (sample standard
deviation over seeds) and baseline_vs_weaving_by_seed.csv holds each seed's bars.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

from weaving.report.load import RunMetrics
from weaving.report.tables import method_label, safe_name

Row = dict[str, Any]

ACCURACY_VS_LAMBDA = ("model", "setup", "method", "lambda", "accuracy")
WEAVING_BY_POOLING = ("model", "setup", "method", "pooling", "pool_over", "accuracy")
BASELINE_VS_WEAVING = ("model", "setup", "method", "variant", "accuracy")
BEST_LAMBDA = ("model", "setup", "method", "task", "best_lambda", "best_accuracy")
SIMILARITY = ("model", "fine_tuning", "benchmark", "row", "column", "cosine")


def accuracy_vs_lambda(run: RunMetrics) -> list[Row]:
    """Task-averaged accuracy at every lam of the search space."""
    rows = []
    for (model, setup, method), r in run.weave.items():
        for lam, acc in zip(r.lambdas, r.sweep_avg()):
            rows.append({"model": model, "setup": setup, "method": method, "lambda": lam, "accuracy": acc})
    return rows


def weaving_by_pooling(run: RunMetrics) -> list[Row]:
    """Task-averaged accuracy of Weight Weaving for every pooling and pool_over."""
    return [{"model": model, "setup": setup, "method": method, "pooling": p, "pool_over": o,
             "accuracy": r.weaving_avg(p, o)}
            for (model, setup, method), r in run.weave.items() for o in run.pool_overs for p in run.poolings]


def baseline_vs_weaving(run: RunMetrics) -> list[Row]:
    """Task-averaged accuracy of the baseline lam and of Weight Weaving (avg over A*); setup 'avg' is the
    mean over setups."""
    rows = []
    for model in run.models:
        for method in run.methods:
            records = [run.get(model, s, method) for s in run.setups]
            for setup, r in zip(run.setups, records):
                rows.append({"model": model, "setup": setup, "method": method, "variant": "baseline",
                             "accuracy": r.baseline_avg})
                rows.append({"model": model, "setup": setup, "method": method, "variant": "weaving",
                             "accuracy": r.weaving_avg("avg", "all")})
            rows.append({"model": model, "setup": "avg", "method": method, "variant": "baseline",
                         "accuracy": fmean(r.baseline_avg for r in records)})
            rows.append({"model": model, "setup": "avg", "method": method, "variant": "weaving",
                         "accuracy": fmean(r.weaving_avg("avg", "all") for r in records)})
    return rows


def best_lambda(run: RunMetrics) -> list[Row]:
    """Each task's best lam over the search space (first in order on ties) and its accuracy."""
    rows = []
    for (model, setup, method), r in run.weave.items():
        best = r.best_lambda_per_task()
        oracle = r.oracle_per_task()
        for task in r.tasks:
            rows.append({"model": model, "setup": setup, "method": method, "task": task,
                         "best_lambda": best[task], "best_accuracy": oracle[task]})
    return rows


def similarity(run: RunMetrics) -> list[Row]:
    """Every cell of the task-vector cosine-similarity matrices."""
    rows = []
    for model in run.models:
        sim = run.similarity[model]
        panels = [("sequential", bench, m) for bench, m in sim.sequential.items()]
        panels.append(("individual", "", sim.individual))
        for kind, bench, m in panels:
            for i, row_label in enumerate(m.labels):
                for j, col_label in enumerate(m.labels):
                    rows.append({"model": model, "fine_tuning": kind, "benchmark": bench, "row": row_label,
                                 "column": col_label, "cosine": m.matrix[i][j]})
    return rows


def to_csv(rows: Iterable[Row], columns: Sequence[str]) -> str:
    """CSV text with a header; floats with 4 decimals (deterministic)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([f"{row[c]:.4f}" if isinstance(row[c], float) else row[c] for c in columns])
    return buffer.getvalue()


def dvc_series(run: RunMetrics) -> dict[str, str]:
    """One CSV per series for `dvc plots`, keyed by path relative to `reports/plots/`.

    `dvc/accuracy_vs_lambda/<model>__<setup>__<method>.csv`: lambda, accuracy, plus one column per
    Weight Weaving pooling (constant, drawn as a flat line); `dvc/baseline_vs_weaving/<model>__<setup>.csv`:
    bar, accuracy (one bar per method and variant).
    """
    files: dict[str, str] = {}
    for (model, setup, method), r in run.weave.items():
        woven = {f"weaving_{p}_{o}": r.weaving_avg(p, o) for o in run.pool_overs for p in run.poolings}
        rows = [{"lambda": lam, "accuracy": acc, **woven} for lam, acc in zip(r.lambdas, r.sweep_avg())]
        name = f"dvc/accuracy_vs_lambda/{safe_name(model)}__{setup}__{method}.csv"
        files[name] = to_csv(rows, ["lambda", "accuracy", *woven])
    bars = baseline_vs_weaving(run)
    for model in run.models:
        for setup in [*run.setups, "avg"]:
            rows = [{"bar": f"{method_label(b['method'])} · {b['variant']}", "accuracy": b["accuracy"]}
                    for b in bars if b["model"] == model and b["setup"] == setup]
            files[f"dvc/baseline_vs_weaving/{safe_name(model)}__{setup}.csv"] = to_csv(rows, ["bar", "accuracy"])
    return files


def _with_std(rows: list[Row], per_seed: list[list[Row]]) -> list[Row]:
    """`rows` with `accuracy_std`: the sample standard deviation of each row's accuracy over the seeds'
    rows (built the same way, so in the same order)."""
    from statistics import stdev

    return [{**row, "accuracy_std": stdev(seed[i]["accuracy"] for seed in per_seed)} for i, row in enumerate(rows)]


def all_plot_data(run: RunMetrics, seed_runs: Mapping[int, RunMetrics] | None = None) -> dict[str, str]:
    """Every plot-data CSV, keyed by path relative to `reports/plots/`; `seed_runs`: seed -> run when `run`
    is their mean (several: standard deviations and each seed's bars)."""
    seed_runs = seed_runs or {}
    several = len(seed_runs) > 1
    lam_rows, bar_rows = accuracy_vs_lambda(run), baseline_vs_weaving(run)
    lam_columns, bar_columns = ACCURACY_VS_LAMBDA, BASELINE_VS_WEAVING
    if several:
        lam_rows = _with_std(lam_rows, [accuracy_vs_lambda(r) for r in seed_runs.values()])
        bar_rows = _with_std(bar_rows, [baseline_vs_weaving(r) for r in seed_runs.values()])
        lam_columns, bar_columns = (*lam_columns, "accuracy_std"), (*bar_columns, "accuracy_std")
    files = {
        "accuracy_vs_lambda.csv": to_csv(lam_rows, lam_columns),
        "weaving_by_pooling.csv": to_csv(weaving_by_pooling(run), WEAVING_BY_POOLING),
        "baseline_vs_weaving.csv": to_csv(bar_rows, bar_columns),
        "best_lambda.csv": to_csv(best_lambda(run), BEST_LAMBDA),
        "similarity.csv": to_csv(similarity(run), SIMILARITY),
    }
    if several:
        files["baseline_vs_weaving_by_seed.csv"] = to_csv(
            [{"seed": seed, **row} for seed, r in seed_runs.items() for row in baseline_vs_weaving(r)],
            ("seed", *BASELINE_VS_WEAVING))
    files.update(dvc_series(run))
    return files
