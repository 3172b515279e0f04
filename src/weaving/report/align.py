"""The report's C2M3 section: models trained from different seeds, aligned and merged (docs/align.md, "Pipeline").

Reads every `metrics/align/<dataset>-<arch>.json` (`weaving.metrics_align.AlignMetrics`; the file
name must agree with its `dataset` and `arch`). With none, the section says so and its claims are
"not testable". Tables: per run, test accuracy and loss of each merger's merge against the subset
size N (means over the subsets of that size; the ResNet's merges also after REPAIR); the cycle
errors of each merger's pairwise maps; the loss barrier on the linear path between models 0 and 1,
unaligned and after C2M3; C2M3's Frank-Wolfe run and the time of each merger. Figures: accuracy
against N per merger, and the loss along the linear path. Claims (rules in each row):
`c2m3_order`, `c2m3_cycle`, `c2m3_repair`.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from weaving.metrics import MetricsFileError
from weaving.metrics_align import AlignMetrics
from weaving.report.claims import FAILS, HOLDS, MIXED, UNTESTABLE, Claim
from weaving.report.sections import Section
from weaving.report.tables import Label, Table, safe_name

MERGER_LABELS = {"naive": "naive averaging", "pairwise": "pairwise (to model 0)", "mergemany": "MergeMany",
                 "c2m3": "C2M3"}
CYCLE_MERGERS = ("c2m3", "mergemany", "pairwise")
"""The mergers whose largest cycle error `c2m3_cycle` reports, by name."""
ALIGN_TARGET_SECONDS = 60.0
"""Issue 13's target: C2M3 aligns N = 5 MLPs in under a minute on the embedded machine."""
_TIE = 1e-9


def read_runs(metrics_dir: Path) -> dict[str, AlignMetrics]:
    """Every `metrics_dir/align/<dataset>-<arch>.json`, by `<dataset>-<arch>`, sorted by name."""
    runs = {}
    for path in sorted((Path(metrics_dir) / "align").glob("*.json")):
        metrics = AlignMetrics.read(path)
        expected = f"{metrics.dataset}-{metrics.arch}"
        if path.stem != expected:
            raise MetricsFileError(path, [f"holds dataset {metrics.dataset!r} and arch {metrics.arch!r}: its name "
                                          f"must be {expected}.json"])
        runs[path.stem] = metrics
    return runs


def _label(merger: str) -> str:
    return MERGER_LABELS.get(merger, merger)


# --- tables --------------------------------------------------------------------------------------------------------

def accuracy_table(run: str, metrics: AlignMetrics) -> Table:
    """Rows: the endpoints' mean and each merger (and after REPAIR); columns: accuracy, then loss, per N."""
    sizes = [s.size for s in metrics.summary]
    table = Table(f"align_{safe_name(run)}",
                  f"C2M3 and baselines, {metrics.dataset} {metrics.arch}: test accuracy (%) and loss of the merge of N models",
                  ["", *(f"accuracy, N = {n}" for n in sizes), *(f"loss, N = {n}" for n in sizes)],
                  ["row", *(f"accuracy_n{n}" for n in sizes), *(f"loss_n{n}" for n in sizes)])
    table.rows.append([Label("endpoints (mean of the merged models)", "endpoints"),
                       *(s.endpoint_mean.accuracy for s in metrics.summary),
                       *(s.endpoint_mean.loss for s in metrics.summary)])
    mergers = list(metrics.summary[0].mergers)
    for merger in mergers:
        table.rows.append([Label(_label(merger), merger), *(s.mergers[merger].accuracy for s in metrics.summary),
                           *(s.mergers[merger].loss for s in metrics.summary)])
    if metrics.repair:
        for merger in mergers:
            table.rows.append([Label(f"{_label(merger)} + REPAIR", f"{merger}_repair"),
                               *(s.mergers[merger].repair.accuracy for s in metrics.summary),
                               *(s.mergers[merger].repair.loss for s in metrics.summary)])
    first = 1
    for j in range(1, 1 + len(sizes)):
        best = max(row[j] for row in table.rows[first:])
        table.bold |= {(i, j) for i, row in enumerate(table.rows) if i >= first and row[j] >= best - _TIE}
    subsets = ", ".join(f"N = {s.size}: {s.subsets}" for s in metrics.summary)
    table.notes.append(
        f"{metrics.num_models} models ({metrics.arch}, {metrics.model.parameters:,} parameters) trained from seeds "
        f"{metrics.seed}..{metrics.seed + metrics.num_models - 1} on {metrics.train_images} training images; "
        f"{metrics.test_images} test images. Means over the subsets of each size ({subsets}; the first N models, "
        f"then subsets drawn with seed {metrics.seed})."
        + (f" REPAIR on {metrics.repair_samples} training images." if metrics.repair else ""))
    return table


def cycle_table(runs: dict[str, AlignMetrics]) -> Table:
    table = Table("align_cycle_errors", "Cycle errors of the pairwise maps each merger implies (subsets of N >= 3 models)",
                  ["run", "N", "merger", "largest ||C - I||_F", "mean ||C - I||_F", "largest share of units moved (%)",
                   "triples"],
                  ["run", "size", "merger", "max", "mean", "max_percent_moved", "triples"])
    for run, metrics in runs.items():
        for subset in metrics.subsets:
            for merger, record in subset.mergers.items():
                cycle = record.cycle_error
                if cycle is None:
                    continue
                table.rows.append([run, str(subset.size), Label(_label(merger), merger), cycle.max, cycle.mean,
                                   100 * cycle.max_fraction_moved, str(cycle.triples)])
    table.notes.append("For triples a < b < c, C = P_ac P_cb P_ba over all permutation groups; C2M3 and MergeMany "
                       "map through one common frame, pairwise matching matches every pair directly.")
    return table


def barrier_table(runs: dict[str, AlignMetrics]) -> Table:
    table = Table("align_barrier", "Linear path between models 0 and 1: test-loss barrier and accuracy at the midpoint",
                  ["run", "loss barrier, unaligned", "loss barrier, C2M3", "accuracy at l = 0.5, unaligned",
                   "accuracy at l = 0.5, C2M3"],
                  ["run", "barrier_naive", "barrier_c2m3", "mid_accuracy_naive", "mid_accuracy_c2m3"])
    for run, metrics in runs.items():
        path = metrics.path
        middle = min(range(len(path.lambdas)), key=lambda i: abs(path.lambdas[i] - 0.5))
        aligned = path.c2m3
        table.rows.append([run, path.naive.loss_barrier, aligned.loss_barrier if aligned else None,
                           path.naive.accuracy[middle], aligned.accuracy[middle] if aligned else None])
    table.notes.append("Barrier: max over l of loss((1 - l) theta_0 + l theta_1) - ((1 - l) loss(theta_0) + l loss(theta_1)); "
                       "C2M3: both models permuted into the universe of the first subset holding them.")
    return table


def cost_table(runs: dict[str, AlignMetrics]) -> Table:
    table = Table("align_cost", "Alignment cost: seconds per merger, C2M3's Frank-Wolfe run",
                  ["run", "N", "pairwise (s)", "MergeMany (s)", "MergeMany rounds", "C2M3 (s)", "C2M3 iterations",
                   "C2M3 objective (relaxed)", "C2M3 objective (rounded)"],
                  ["run", "size", "pairwise_seconds", "mergemany_seconds", "mergemany_rounds", "c2m3_seconds",
                   "c2m3_iterations", "c2m3_objective", "c2m3_objective_rounded"])
    for run, metrics in runs.items():
        for subset in metrics.subsets:
            m = subset.mergers

            def get(merger, key, m=m):
                record = m.get(merger)
                return None if record is None else getattr(record, key)

            trace = get("c2m3", "objective_trace")
            rounds, iterations = get("mergemany", "rounds"), get("c2m3", "iterations")
            table.rows.append([run, str(subset.size), get("pairwise", "seconds"), get("mergemany", "seconds"),
                               None if rounds is None else str(rounds), get("c2m3", "seconds"),
                               None if iterations is None else str(iterations), trace[-1] if trace else None,
                               get("c2m3", "objective_rounded")])
    seconds = "; ".join(f"{run}: training {m.train_seconds:.1f} s, merges and evaluations {m.seconds:.1f} s"
                        for run, m in runs.items())
    table.notes.append(f"Stage times: {seconds}.")
    return table


# --- figures -------------------------------------------------------------------------------------------------------

def figure_accuracy(runs: dict[str, AlignMetrics]) -> bytes:
    """Test accuracy of each merger's merge against N, one panel per run; dotted: the endpoints' mean."""
    from weaving.report.figures import OKABE_ITO, STYLE, plt, png_bytes

    colours = {"naive": OKABE_ITO["vermillion"], "pairwise": OKABE_ITO["orange"], "mergemany": OKABE_ITO["green"],
               "c2m3": OKABE_ITO["blue"]}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
        for ax, (run, metrics) in zip(axes[0], runs.items()):
            sizes = [s.size for s in metrics.summary]
            for merger in metrics.summary[0].mergers:
                colour = colours.get(merger, OKABE_ITO["purple"])
                ax.plot(sizes, [s.mergers[merger].accuracy for s in metrics.summary], marker="o", color=colour,
                        label=_label(merger))
                if metrics.repair:
                    ax.plot(sizes, [s.mergers[merger].repair.accuracy for s in metrics.summary], marker="s",
                            linestyle="--", color=colour, label=f"{_label(merger)} + REPAIR")
            ax.plot(sizes, [s.endpoint_mean.accuracy for s in metrics.summary], color="black", linestyle=":",
                    label="endpoints")
            ax.set_xticks(sizes)
            ax.set_xlabel("N (models merged)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(run)
            ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        return png_bytes(fig)


def figure_barrier(runs: dict[str, AlignMetrics]) -> bytes:
    """Test loss along (1 - l) theta_0 + l theta_1, unaligned and after C2M3, one panel per run."""
    from weaving.report.figures import OKABE_ITO, STYLE, plt, png_bytes

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
        for ax, (run, metrics) in zip(axes[0], runs.items()):
            path = metrics.path
            ax.plot(path.lambdas, path.naive.loss, marker="o", color=OKABE_ITO["vermillion"], label="unaligned")
            if path.c2m3 is not None:
                ax.plot(path.lambdas, path.c2m3.loss, marker="o", color=OKABE_ITO["blue"], label="C2M3")
            ax.set_xlabel("l (model 0 -> model 1)")
            ax.set_ylabel("test loss")
            ax.set_title(run)
            ax.legend(loc="best")
        fig.tight_layout()
        return png_bytes(fig)


# --- claims --------------------------------------------------------------------------------------------------------

PAPER = "Crisostomi et al. (NeurIPS 2024), C2M3: cycle-consistent multi-model merging."


def order_cases(runs: dict[str, AlignMetrics], variant: str | None = None) -> list[dict]:
    """Per run and N >= 3: the mean test accuracy of naive averaging, MergeMany and C2M3 (`variant='repair'`:
    after REPAIR, runs with REPAIR only) and whether C2M3 >= MergeMany > naive."""
    cases = []
    for run, metrics in runs.items():
        if variant == "repair" and not metrics.repair:
            continue
        for entry in metrics.summary:
            if entry.size < 3 or not {"naive", "mergemany", "c2m3"} <= set(entry.mergers):
                continue
            acc = {m: (entry.mergers[m].repair.accuracy if variant == "repair" else entry.mergers[m].accuracy)
                   for m in ("naive", "mergemany", "c2m3")}
            holds = acc["c2m3"] >= acc["mergemany"] - _TIE and acc["mergemany"] > acc["naive"] + _TIE
            cases.append({"run": run, "dataset": metrics.dataset, "arch": metrics.arch, "size": entry.size, **acc,
                          "holds": holds})
    return cases


def _case_text(case: dict) -> str:
    return (f"{case['run']} N = {case['size']}: C2M3 {case['c2m3']:.1f}, MergeMany {case['mergemany']:.1f}, "
            f"naive {case['naive']:.1f}")


def claim_order(runs: dict[str, AlignMetrics]) -> Claim:
    statement = "C2M3 merges better than Git Re-Basin's MergeMany, which merges better than naive averaging."
    rule = ("Per run (dataset and architecture) and subset size N >= 3: mean test accuracy over the subsets of that "
            "size, without REPAIR. Holds when C2M3 >= MergeMany > naive in every case; does not hold when in none; "
            "mixed otherwise (the failing cases are listed). After REPAIR: in the numbers, not the verdict.")
    cases = order_cases(runs)
    if not cases:
        return Claim("c2m3_order", "C2M3", statement, rule, UNTESTABLE,
                     "not testable: no metrics/align/*.json with a subset of 3 models or more and the mergers naive, "
                     "mergemany, c2m3", paper=PAPER)
    held = sum(case["holds"] for case in cases)
    verdict = HOLDS if held == len(cases) else FAILS if held == 0 else MIXED
    failing = [c for c in cases if not c["holds"]]
    evidence = f"{held} of {len(cases)} cases (run, N >= 3) hold"
    if failing:
        evidence += "; fails for " + "; ".join(_case_text(c) for c in failing)
    repaired = order_cases(runs, "repair")
    if repaired:
        evidence += f"; after REPAIR {sum(c['holds'] for c in repaired)} of {len(repaired)} hold"
    return Claim("c2m3_order", "C2M3", statement, rule, verdict, evidence,
                 numbers={"cases": cases, "held": held, "total": len(cases), "repair_cases": repaired}, paper=PAPER)


def largest_cycle_errors(runs: dict[str, AlignMetrics]) -> dict[str, float]:
    """Per merger name (c2m3, mergemany, pairwise): its largest cycle error over every run and subset."""
    largest: dict[str, float] = {}
    for metrics in runs.values():
        for subset in metrics.subsets:
            for merger, record in subset.mergers.items():
                if merger in CYCLE_MERGERS and record.cycle_error is not None:
                    largest[merger] = max(largest.get(merger, 0.0), record.cycle_error.max)
    return {m: largest[m] for m in CYCLE_MERGERS if m in largest}


def claim_cycle(runs: dict[str, AlignMetrics]) -> Claim:
    statement = "C2M3's pairwise maps are cycle-consistent (cycle error 0); pairwise matching's are not."
    rule = ("Largest ||P_ac P_cb P_ba - I||_F over every run, subset of N >= 3 models and triple, per merger. Holds when "
            "C2M3's is exactly 0 and pairwise matching's is above 0; does not hold when C2M3's is above 0; mixed when "
            "both are 0 (no contrast shown).")
    largest = largest_cycle_errors(runs)
    if "c2m3" not in largest or "pairwise" not in largest:
        return Claim("c2m3_cycle", "C2M3", statement, rule, UNTESTABLE,
                     "not testable: no subset of 3 models or more merged by both C2M3 and pairwise matching",
                     numbers=largest, paper=PAPER)
    verdict = FAILS if largest["c2m3"] > 0 else HOLDS if largest["pairwise"] > 0 else MIXED
    evidence = "largest cycle error: " + ", ".join(f"{_label(m)} {v:.3g}" for m, v in largest.items())
    return Claim("c2m3_cycle", "C2M3", statement, rule, verdict, evidence, numbers=largest, paper=PAPER)


def repair_cases(runs: dict[str, AlignMetrics]) -> list[dict]:
    """Every merge of the runs with REPAIR: accuracy before and after."""
    return [{"run": run, "size": subset.size, "models": list(subset.models), "merger": merger,
             "accuracy": record.accuracy, "repair": record.repair.accuracy}
            for run, metrics in runs.items() if metrics.repair
            for subset in metrics.subsets for merger, record in subset.mergers.items() if record.repair is not None]


def claim_repair(runs: dict[str, AlignMetrics]) -> Claim:
    statement = "REPAIR (renormalising the merged conv net's activations) improves conv-net merges."
    rule = ("Every merge of the runs with REPAIR (the ResNet): test accuracy after REPAIR against before. Holds when it "
            "rises for more than half of the merges, does not hold when for fewer than half, mixed at half.")
    cases = repair_cases(runs)
    if not cases:
        return Claim("c2m3_repair", "C2M3", statement, rule, UNTESTABLE,
                     "not testable: no metrics/align/*.json with REPAIR (a ResNet run)", paper=PAPER)
    gains = [c["repair"] - c["accuracy"] for c in cases]
    raised = sum(1 for g in gains if g > _TIE)
    lowered = sum(1 for g in gains if g < -_TIE)
    verdict = HOLDS if 2 * raised > len(cases) else FAILS if 2 * raised < len(cases) else MIXED
    c2m3 = [g for c, g in zip(cases, gains) if c["merger"] == "c2m3"]
    evidence = (f"REPAIR raises {raised} of {len(cases)} merges, lowers {lowered}; mean gain {fmean(gains):+.2f} points"
                + (f" (C2M3's merges: {fmean(c2m3):+.2f})" if c2m3 else ""))
    return Claim("c2m3_repair", "C2M3", statement, rule, verdict, evidence,
                 numbers={"raised": raised, "lowered": lowered, "merges": len(cases), "mean_gain_pp": fmean(gains),
                          "c2m3_mean_gain_pp": fmean(c2m3) if c2m3 else None}, paper=PAPER)


# --- the section ---------------------------------------------------------------------------------------------------

def _run_text(run: str, metrics: AlignMetrics) -> str:
    parts = []
    for entry in metrics.summary:
        m = entry.mergers
        cells = ", ".join(f"{_label(k)} {v.accuracy:.1f}" + (f" ({v.repair.accuracy:.1f} with REPAIR)" if v.repair else "")
                          for k, v in m.items())
        parts.append(f"N = {entry.size}: {cells} (endpoints {entry.endpoint_mean.accuracy:.1f})")
    text = f"{run}: test accuracy (%) of the merge of N models: " + "; ".join(parts) + "."
    if metrics.arch == "mlp":
        five = [s.mergers["c2m3"].seconds for s in metrics.subsets if s.size == 5 and "c2m3" in s.mergers]
        if five:
            met = "met" if max(five) < ALIGN_TARGET_SECONDS else "missed"
            text += (f" C2M3 aligned the 5 MLPs in {max(five):.1f} s (target under {ALIGN_TARGET_SECONDS:g} s: {met}).")
    return text


def section(metrics_dir: Path, models: list[str], seed: int | None = None) -> Section:
    """The C2M3 section from `metrics_dir/align/` (see the module docstring; `models`, the CLIP models, and
    `seed`, the replicate, are unused)."""
    runs = read_runs(Path(metrics_dir))
    result = Section("C2M3: aligning and merging models trained from different seeds")
    if not runs:
        result.text.append("no C2M3 metrics (metrics/align/<dataset>-<arch>.json): the align stages did not run.")
    for run, metrics in runs.items():
        result.text.append(_run_text(run, metrics))
        result.tables.append(accuracy_table(run, metrics))
    if runs:
        result.tables += [cycle_table(runs), barrier_table(runs), cost_table(runs)]
        result.figures["align_accuracy_vs_n.png"] = figure_accuracy(runs)
        result.captions["align_accuracy_vs_n.png"] = (
            "Test accuracy of the merge of N models trained from different seeds, per merger (mean over the subsets "
            "of each size); dashed: after REPAIR (ResNet); dotted: the merged models' own mean.")
        result.figures["align_barrier.png"] = figure_barrier(runs)
        result.captions["align_barrier.png"] = (
            "Test loss along the linear path between models 0 and 1: unaligned, and after C2M3 maps both into its "
            "universe.")
    result.claims = [claim_order(runs), claim_cycle(runs), claim_repair(runs)]
    return result
