"""The paper's published numbers (`paper_results.json`) and their comparison with this run.

Only the `paper` profile (CLIP ViT-B-32/B-16/L-14 on the paper's datasets) can be compared;
any other profile gets the published Table 2 for reference and a statement of why not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from statistics import fmean
from typing import Any

from weaving.report.load import RunMetrics
from weaving.report.tables import SETUP_SHORT, Label, Table, method_cell

COMPARABLE_PROFILE = "paper"


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The paper's Tables 1-12 as data (see the file's 'notes' for how they were transcribed)."""
    text = resources.files("weaving.report").joinpath("paper_results.json").read_text()
    return json.loads(text)


def published_table2() -> Table:
    """The paper's Table 2 as published: baseline (lam = 1) and Weight Weaving per method, setup, model."""
    data = paper_results()
    grid = [(s, m) for s in data["setups"] for m in data["models"]]
    table = Table("paper_table2", "Published Table 2 (the paper): data-free average accuracy (%)",
                  ["Method", "Variant", *[f"{SETUP_SHORT[s]} {m}" for s, m in grid], "Avg"],
                  ["method", "variant", *[f"{s}/{m}" for s, m in grid], "avg"])
    for method, entry in data["table2"].items():
        for variant, label in (("baseline", "baseline (λ = 1)"), ("weaving", "+ Weight Weaving")):
            values = entry[variant]["values"]
            table.rows.append([method_cell(method), Label(label, variant), *[float(values[s][m]) for s, m in grid],
                               float(entry[variant]["avg"])])
    return table


@dataclass
class Comparison:
    """The paper-comparison page: paragraphs, then tables."""

    comparable: bool
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    per_task: Table | None = None
    """The appendix (Tables 4-12) task by task; long, so written as its own table file."""

    def to_markdown(self) -> str:
        parts = ["# This run against the paper's published numbers", ""]
        for p in self.paragraphs:
            parts += [p, ""]
        parts += [t.to_markdown() for t in self.tables]
        return "\n".join(parts).rstrip("\n") + "\n"


def _compare_table2(run: RunMetrics, models: list[str]) -> Table:
    data = paper_results()["table2"]
    table = Table("paper_vs_run_table2", "Table 2 cells: this run vs the paper (%)",
                  ["Method", "Variant", "Setup", "Model", "This run", "Paper", "Δ (run − paper)"],
                  ["method", "variant", "setup", "model", "run", "paper", "difference"])
    for method in run.methods:
        if method not in data:
            continue
        for setup in run.setups:
            for model in models:
                r = run.get(model, setup, method)
                for variant, ours, label in (("baseline", r.baseline_avg, "baseline (λ = 1)"),
                                             ("weaving", r.weaving_avg("avg", "all"), "+ Weight Weaving")):
                    theirs = float(data[method][variant]["values"][setup][model])
                    table.rows.append([method_cell(method), Label(label, variant), Label(SETUP_SHORT[setup], setup),
                                       model, ours, theirs,
                                       ours - theirs])
    return table


def _compare_table1(run: RunMetrics, models: list[str]) -> Table:
    data = paper_results()["table1"]
    table = Table("paper_vs_run_table1", "Table 1 cells (recommended λ): this run vs the paper (%)",
                  ["Method", "λ (paper)", "Setup", "Model", "This run", "Paper", "Δ (run − paper)"],
                  ["method", "lam", "setup", "model", "run", "paper", "difference"])
    for method in run.methods:
        if method not in data:
            continue
        for setup in run.setups:
            for model in models:
                ours = run.get(model, setup, method).recommended_avg
                theirs = float(data[method]["values"][setup][model])
                table.rows.append([method_cell(method), f"{data[method]['lam']:g}", Label(SETUP_SHORT[setup], setup), model,
                                   ours, theirs, ours - theirs])
    return table


def _compare_table3(run: RunMetrics) -> Table:
    data = paper_results()["table3"]
    table = Table("paper_vs_run_table3", "Table 3 (pooling over A*, mean over all setups and models): run vs paper (%)",
                  ["Method", "Pooling", "This run", "Paper", "Δ (run − paper)"],
                  ["method", "pooling", "run", "paper", "difference"])
    for method in run.methods:
        if method not in data:
            continue
        for pooling in run.poolings:
            ours = fmean(run.get(mo, s, method).weaving_avg(pooling, "all") for s in run.setups for mo in run.models)
            table.rows.append([method_cell(method), pooling, ours, float(data[method][pooling]),
                               ours - float(data[method][pooling])])
    return table


def _canonical(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _paper_task_key(column: str) -> str:
    """'EuroSAT' -> 'eurosat'; continual-learning column 'ImageNetR/10' -> 'imagenetrs10' (as 'imagenet_r-s10')."""
    if "/" in column:
        dataset, splits = column.split("/")
        return f"{_canonical(dataset)}s{splits}"
    return _canonical(column)


def _compare_per_task(run: RunMetrics, models: list[str]) -> Table | None:
    appendix = paper_results()["appendix"]
    table = Table("paper_vs_run_per_task", "Per-task accuracy (the paper's Tables 4-12): this run vs the paper (%)",
                  ["Setup", "Model", "Method", "Variant", "Task", "This run", "Paper", "Δ (run − paper)"],
                  ["setup", "model", "method", "variant", "task", "run", "paper", "difference"])
    labels = {"recommended": "recommended λ", "baseline": "baseline (λ = 1)", "weaving": "+ Weight Weaving"}
    for setup in run.setups:
        for model in models:
            for method in run.methods:
                r = run.get(model, setup, method)
                ours = {"recommended": r.recommended, "baseline": r.baseline,
                        "weaving": r.weaving_per_task("avg", "all")}
                tasks = {_canonical(t): t for t in r.tasks}
                for row in appendix[setup][model]["rows"]:
                    if row["method"] != method:
                        continue
                    for column, theirs in row["values"].items():
                        task = tasks.get(_paper_task_key(column))
                        if task is None:
                            continue
                        value = ours[row["variant"]][task]
                        table.rows.append([Label(SETUP_SHORT[setup], setup), model, method_cell(method),
                                           Label(labels[row["variant"]], row["variant"]), task, value,
                                           float(theirs), value - float(theirs)])
    return table if table.rows else None


def paper_comparison(run: RunMetrics, profile: str) -> Comparison:
    """This run beside the published numbers when `profile` is 'paper'; otherwise why they are not comparable."""
    data = paper_results()
    shared = [m for m in run.models if m in data["models"]]
    if profile != COMPARABLE_PROFILE or not shared:
        why = (f"profile '{profile}' is not the '{COMPARABLE_PROFILE}' profile" if profile != COMPARABLE_PROFILE
               else f"none of this run's models {run.models} is one of the paper's {data['models']}")
        comparison = Comparison(comparable=False)
        comparison.paragraphs += [
            f"**Not comparable**: {why}. The paper merges OpenAI CLIP ViT-B-32, ViT-B-16 and ViT-L-14 image "
            f"encoders, each fine-tuned on 8 vision datasets (Cars, MNIST, EuroSAT, SVHN, RESISC45, SUN397, DTD, "
            f"GTSRB) and sequentially on CIFAR100, ImageNet-R, CUB200 and Cars splits, at full scale. This run's "
            f"model(s) ({', '.join(run.models)}) differ in architecture, pretraining data, fine-tuning data and "
            f"scale, so its accuracies measure a different problem; only the direction of the effects (see "
            f"claims.md) can be compared, not the numbers.",
            "The paper's published Table 2 is kept below for reference (source: paper_results.json in the "
            "weaving.report package).",
        ]
        comparison.tables.append(published_table2())
        return comparison
    comparison = Comparison(comparable=True)
    full = set(shared) == set(data["models"]) and set(run.setups) == set(data["setups"])
    comparison.paragraphs.append(
        f"Profile '{profile}': this run's model(s) {shared} are the paper's; each cell below is the task-averaged "
        f"accuracy of this run beside the paper's published value and their difference (percentage points). "
        f"Differences come from checkpoints, data preparation, seeds and evaluation details.")
    skipped = [m for m in run.models if m not in shared]
    if skipped:
        comparison.paragraphs.append(f"Model(s) {skipped} are not in the paper and are left out.")
    comparison.tables += [_compare_table2(run, shared), _compare_table1(run, shared)]
    if full:
        comparison.tables.append(_compare_table3(run))
    else:
        comparison.paragraphs.append("Table 3 is not compared: it averages over all three models and setups, "
                                     "and this run does not cover them all.")
    comparison.tables.append(published_table2())
    comparison.per_task = _compare_per_task(run, shared)
    if comparison.per_task is None:
        comparison.paragraphs.append("No task of this run matches a dataset column of the paper's Tables 4-12, so "
                                     "there is no per-task comparison.")
    else:
        comparison.paragraphs.append(f"Task by task (the paper's Tables 4-12): tables/{comparison.per_task.name}.md "
                                     f"and .csv ({len(comparison.per_task.rows)} cells).")
    return comparison
