"""Weight Weaving beyond lam in the report: search spaces over a hyper-parameter, merge methods as poolings.

The paper (Section 3.2, "Practical considerations"; Section 5.3) states that the search space
may hold any hyper-parameter, not only lam, and that any merging function may serve as the
pooling function, but tests neither beyond MagMax pooling. The weave stages run both when the
params ask (`method_params.<method>.space`, `weave.method_poolings`) and record them as
`WeaveMetrics.extensions` (`lam_x_<axes>`, `<method>_pooling`). This module turns those
records into one table (per method and variant, each setup's mean over models and tasks,
beside the baseline and Weight Weaving over lam only) and the claims-check row `beyond_lam`.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from weaving.catalogue import method_label
from weaving.metrics import WeaveExtension
from weaving.report.claims import GAIN_RULE, HOLDS, UNTESTABLE, Claim, _combine, _is_gain, _majority, _pp
from weaving.report.load import RunMetrics
from weaving.report.tables import SETUP_SHORT, Label, Table, method_cell


def variant_label(variant: WeaveExtension) -> str:
    """A space over density -> "λ × density"; TSV as the pooling -> "TSV as pooling"."""
    if variant.space:
        return "λ × " + " × ".join(variant.space)
    return f"{method_label(variant.pooling)} as pooling"


def variant_kind(name: str, variant: WeaveExtension) -> str:
    """The claim part a variant belongs to: `space` (any hyper-parameter axis) or its own name."""
    return "space" if variant.space else name


def variants(run: RunMetrics) -> dict[str, dict[str, WeaveExtension]]:
    """Per method, the variants its records hold (the same in every setup and model), in file order."""
    found: dict[str, dict[str, WeaveExtension]] = {}
    for method in run.methods:
        extensions = run.get(run.models[0], run.setups[0], method).extensions
        if extensions:
            found[method] = dict(extensions)
    return found


def _setup_mean(run: RunMetrics, method: str, setup: str, value) -> float:
    return fmean(value(run.get(model, setup, method)) for model in run.models)


def beyond_lam_table(run: RunMetrics) -> Table | None:
    """Per method: the baseline, Weight Weaving over lam only (avg over A*) and each variant beyond lam,
    per setup (mean over models) and on average; None when no record holds a variant."""
    found = variants(run)
    if not found:
        return None
    columns = [SETUP_SHORT[s] for s in run.setups]
    table = Table("beyond_lam", "Weight Weaving beyond λ: hyper-parameter search spaces and merge methods as poolings",
                  ["Method", "Weight Weaving over", *columns, "Avg", "Δ vs λ only"],
                  ["method", "variant", *run.setups, "avg", "gain_over_lam_only"])
    for method, extensions in found.items():
        rows = [("baseline", "baseline (λ = 1)", lambda r: r.baseline_avg),
                ("lam_only", "λ only (avg, A*)", lambda r: r.weaving_avg("avg", "all"))]
        rows += [(name, variant_label(variant), lambda r, n=name: r.extension_avg(n))
                 for name, variant in extensions.items()]
        lam_only = fmean(_setup_mean(run, method, s, rows[1][2]) for s in run.setups)
        for key, label, value in rows:
            cells = [_setup_mean(run, method, s, value) for s in run.setups]
            average = fmean(cells)
            delta = None if key in ("baseline", "lam_only") else average - lam_only
            table.rows.append([method_cell(method), Label(label, key), *cells, average, delta])
    table.notes.append("Each cell: mean over the setup's tasks and the models; Avg: mean over setups. Variants pool "
                       "over A* (the task vectors and the scaled merges): λ × h weaves over every (λ, h) point of the "
                       "search space with avg pooling (params method_params.<method>.space); '<method> as pooling' "
                       "merges the members by that method at λ = 1 (params weave.method_poolings). Δ vs λ only: the "
                       "variant's Avg minus Weight Weaving over λ only.")
    return table


def claim_beyond_lam(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Claim:
    statement = ("Weight Weaving extends beyond λ: the search space may hold any hyper-parameter, and any merging "
                 "function may serve as the pooling function.")
    rule = ("One part per kind of variant: hyper-parameter search spaces (λ × h, every method that has one), and each "
            "merge method used as the pooling. A part holds when its variant beats the data-free baseline (λ = 1) "
            "in more than half of its (method, setup, model) cells, does not hold below half, mixed at half; the "
            "claim holds when every part holds, does not hold when none does, mixed otherwise. The numbers also "
            "give each part's mean gain over Weight Weaving over λ only, which the claim does not require. "
            + GAIN_RULE)
    paper = "Section 3.2 and 5.3: stated, tested only with MagMax as pooling (Table 3)."
    found = variants(run)
    if not found:
        return Claim("beyond_lam", "3.2", statement, rule, UNTESTABLE,
                     "not testable: no weave ran a variant beyond λ (params method_params.<method>.space, "
                     "weave.method_poolings)", paper=paper)
    parts: dict[str, dict[str, float | int]] = {}
    labels: dict[str, str] = {}
    for method, extensions in found.items():
        for name, variant in extensions.items():
            kind = variant_kind(name, variant)
            labels[kind] = "λ × h" if kind == "space" else variant_label(variant)
            part = parts.setdefault(kind, {"cells": 0, "wins": 0, "gain": 0.0, "over_lam_only": 0.0})
            for setup in run.setups:
                for model in run.models:
                    record = run.get(model, setup, method)
                    value = record.extension_avg(name)
                    part["cells"] += 1
                    per_seed = [r.get(model, setup, method).extension_avg(name) - r.get(model, setup, method).baseline_avg
                                for r in seed_runs]
                    part["wins"] += int(_is_gain(value - record.baseline_avg, per_seed or None))
                    part["gain"] += value - record.baseline_avg
                    part["over_lam_only"] += value - record.weaving_avg("avg", "all")
    parts = dict(sorted(parts.items(), key=lambda item: item[0] != "space"))  # the search spaces first
    numbers = {kind: {"cells": p["cells"], "cells_beating_baseline": p["wins"],
                      "mean_gain_pp": p["gain"] / p["cells"], "mean_gain_over_lam_only_pp": p["over_lam_only"] / p["cells"]}
               for kind, p in parts.items()}
    verdicts = {kind: _majority(n["cells_beating_baseline"], n["cells"]) for kind, n in numbers.items()}
    evidence = "; ".join(
        f"{labels[kind]}: beats the baseline in {n['cells_beating_baseline']}/"
        f"{n['cells']} cells, mean {_pp(n['mean_gain_pp'])} (vs λ only {_pp(n['mean_gain_over_lam_only_pp'])})"
        f"{'' if verdicts[kind] == HOLDS else ' — ' + verdicts[kind]}"
        for kind, n in numbers.items())
    return Claim("beyond_lam", "3.2", statement, rule, _combine(list(verdicts.values())), evidence,
                 numbers=numbers, paper=paper)
