"""The report's MERGE3 section: evolutionary merging with IRT-estimated fitness (docs/search.md, "Pipeline").

Reads `metrics/<model>/search/merge3.json` (`weaving.metrics_search`) and, beside it, the weave stage's
Task Arithmetic record of the multi-task setup (`metrics/<model>/seed<seed>/weave/task_arithmetic/mtl.json`: the
recommended lam, the sweep over lam on test, Weight Weaving), the zero-shot and fine-tuned test
accuracies; a model without merge3.json is left out (the section says which), and with none the
claims are "not testable". Tables: the final test accuracy of each search against full-data
evolution, Task Arithmetic at its recommended lam, at the lam chosen on the validation items, at the
best lam on test (the oracle: privileged, it looks at the test data) and Weight Weaving; each
estimator's error against full-data fitness and its cost ratio; the endpoints' accuracy on the items
against their test accuracy. Figure: best fitness so far over the generations of each search. Claims
(with several models, numbers are means over the models that have the file): `merge3_cost` (numbers
`cost_ratio`, `final_gap_pp`), `merge3_quality`, `merge3_estimator`.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from weaving.metrics import FinetuneMetrics, WeaveMetrics, ZeroshotMetrics
from weaving.metrics_search import Merge3Metrics
from weaving.report.claims import FAILS, HOLDS, MIXED, UNTESTABLE, Claim
from weaving.report.load import replicate_folder
from weaving.report.sections import Section
from weaving.report.tables import Label, Table, safe_name

COST_RATIO_TARGET = 25.0
"""Issue 12: the estimated fitness evaluates at least 25x fewer items per candidate than full-data fitness."""
FINAL_GAP_TARGET_PP = 1.0
"""Issue 12: the estimated-fitness search ends within 1 point (test accuracy) of full-data evolution."""
WEAVING_CHOICE = ("avg", "all")
"""The Weight Weaving row: pooling and pool_over (the paper's main configuration)."""

METHOD_NAMES = {"task_arithmetic": "Task Arithmetic", "ties": "TIES", "dare": "DARE"}
KIND_NAMES = {"full": "full-data fitness", "anchors": "anchor mean", "mp_irt": "mp-IRT", "gmp_irt": "gmp-IRT"}
PAPER = ("Mencattini et al. (ICML 2025), MERGE3: up to ~50x fewer fitness evaluations with the quality of "
         "full-data evolutionary merging (LLMs, tinyBenchmarks-style IRT estimates).")


class Comparison:
    """One model's numbers that the claims and the main table compare (test means, %)."""

    def __init__(self, metrics: Merge3Metrics, weave: WeaveMetrics | None) -> None:
        self.metrics = metrics
        head = metrics.headline
        self.full = head.full_test_mean
        self.reported = head.reported_test_mean
        base = metrics.baselines
        if weave is not None and set(weave.tasks) == set(metrics.tasks) and \
                abs(weave.recommended_lam - base.recommended_lam) < 1e-9:
            self.recommended_lam, self.recommended = weave.recommended_lam, weave.mean(weave.recommended)
            self.recommended_source = "weave stage"
        else:
            self.recommended_lam, self.recommended = base.recommended_lam, base.recommended.test_mean
            self.recommended_source = "merge3 stage"
        self.oracle_lam = self.oracle = self.weaving = None
        if weave is not None and set(weave.tasks) == set(metrics.tasks):
            means = [fmean(weave.sweep[t][i] for t in weave.tasks) for i in range(len(weave.lambdas))]
            best = max(range(len(means)), key=lambda i: (means[i], -i))
            self.oracle_lam, self.oracle = weave.lambdas[best], means[best]
            pooling, over = WEAVING_CHOICE
            if over in weave.weaving.get(pooling, {}):
                self.weaving = weave.mean(weave.weaving[pooling][over])


def _read(metrics_dir: Path, models: list[str], seed: int | None) -> tuple[dict, dict, dict, dict]:
    merge3, weave, zeroshot, finetuned = {}, {}, {}, {}
    for model in models:
        folder = metrics_dir / model
        if not (folder / "search" / "merge3.json").is_file():
            continue
        merge3[model] = Merge3Metrics.read(folder / "search" / "merge3.json")
        replicate = replicate_folder(metrics_dir, model, seed)  # merge3 reads replicate `seed`'s fine-tuned models
        if (replicate / "weave" / "task_arithmetic" / "mtl.json").is_file():
            weave[model] = WeaveMetrics.read(replicate / "weave" / "task_arithmetic" / "mtl.json")
        if (folder / "zeroshot.json").is_file():
            zeroshot[model] = ZeroshotMetrics.read(folder / "zeroshot.json").root
        finetuned[model] = {t: FinetuneMetrics.read(replicate / "finetune" / f"{t}.json").accuracy
                            for t in merge3[model].tasks if (replicate / "finetune" / f"{t}.json").is_file()}
    return merge3, weave, zeroshot, finetuned


def _search_label(method: str, kind: str) -> str:
    return f"{METHOD_NAMES.get(method, method)}, {KIND_NAMES.get(kind, kind)} search"


def results_table(model: str, metrics: Merge3Metrics, weave: WeaveMetrics | None) -> Table:
    """Final test accuracy per task of every search and of the baselines, with each search's cost."""
    tasks = metrics.tasks
    compare = Comparison(metrics, weave)
    table = Table(f"merge3_{safe_name(model)}",
                  f"MERGE3 ({model}): test accuracy (%) of each search's final merge and of the baselines",
                  ["", *tasks, "mean", "below full-data search (points)", "best fitness", "validation mean",
                   "item evaluations", "cost ratio", "search time (s)"],
                  ["row", *tasks, "mean", "gap_to_full_pp", "best_fitness", "val_mean", "item_evaluations",
                   "cost_ratio", "seconds"])

    def gap(mean: float | None) -> float | None:
        return None if compare.full is None or mean is None else compare.full - mean

    for method, by_kind in metrics.searches.items():
        for kind, record in by_kind.items():
            final = record.final
            table.rows.append([Label(_search_label(method, kind), f"{method}:{kind}"),
                               *(final.test_accuracy[t] for t in tasks), final.test_mean, gap(final.test_mean),
                               record.best_fitness, final.val_mean, str(record.item_evaluations),
                               metrics.cost_ratio[kind], record.seconds])
    base = metrics.baselines
    table.rows.append([Label(f"Task Arithmetic, lam = {base.recommended_lam:g} (recommended)", "ta_recommended"),
                       *(base.recommended.test_accuracy[t] for t in tasks), base.recommended.test_mean,
                       gap(base.recommended.test_mean), None, base.recommended.val_mean, None, None, None])
    table.rows.append([Label(f"Task Arithmetic, lam = {base.best_val_lam:g} chosen on the items", "ta_best_val"),
                       *(base.best_val.test_accuracy[t] for t in tasks), base.best_val.test_mean,
                       gap(base.best_val.test_mean), None, base.best_val.val_mean,
                       str(len(base.lambdas) * metrics.items.total), None, None])
    if compare.oracle is not None and weave is not None:
        i = weave.lambdas.index(compare.oracle_lam)
        table.rows.append([Label(f"Task Arithmetic, lam = {compare.oracle_lam:g} best on test (oracle, privileged)",
                                 "ta_oracle"), *(weave.sweep[t][i] for t in tasks), compare.oracle,
                           gap(compare.oracle), None, None, None, None, None])
    if compare.weaving is not None and weave is not None:
        pooling, over = WEAVING_CHOICE
        table.rows.append([Label(f"Weight Weaving ({pooling}, {over}; data-free)", "weight_weaving"),
                           *(weave.weaving[pooling][over][t] for t in tasks), compare.weaving,
                           gap(compare.weaving), None, None, None, None, None])
    config = metrics.config
    table.notes.append(
        f"Items: {metrics.items.total} validation images ({', '.join(f'{t} {n}' for t, n in metrics.items.per_task.items())}) "
        f"sliced from the prepared '{metrics.items.split}' split, disjoint from train and test; "
        f"{metrics.items.anchors_per_task} anchors per task. {config.algorithm.upper()} with population "
        f"{config.search_population} for {config.generations} generations on genes "
        f"{config.coefficient_grid[0]:g}..{config.coefficient_grid[1]:g} step {config.coefficient_grid[2]:g}; "
        f"IRT: {config.irt_dims} dimension(s) fitted on {metrics.irt.subjects} subjects (pretrained, "
        f"{len(metrics.tasks)} fine-tuned, {config.population_size} random merges; "
        f"{metrics.population.item_evaluations} item evaluations, {metrics.population.seconds:.1f} s). "
        f"Best fitness: what the search maximised for its best genome (mean validation accuracy over tasks for "
        f"full-data fitness, its estimate from the anchors otherwise); validation mean: that merge on all the "
        f"items. Item evaluations count distinct candidates x items per candidate (the response population not "
        f"included); cost ratio = items per candidate with full-data fitness / with this one. The oracle (the best "
        f"lam of the weave stage's search space on test) and "
        f"Weight Weaving rows are the weave stage's (multi-task setup); the recommended-lam row is the merge3 "
        f"stage's own measurement (the weave stage's: "
        + (f"{compare.recommended:.2f}%" if compare.recommended_source == "weave stage" else "not available")
        + f"). The whole stage took {metrics.seconds:.1f} s.")
    return table


def estimator_table(model: str, metrics: Merge3Metrics) -> Table:
    table = Table(f"merge3_estimators_{safe_name(model)}",
                  f"MERGE3 ({model}): fitness estimators against full-data fitness (mean absolute error, points)",
                  ["method", "estimator", "fitness MAE", "per-task MAE", "candidates", "items per candidate",
                   "cost ratio"],
                  ["method", "estimator", "fitness_mae_pp", "task_mae_pp", "candidates", "items_per_candidate",
                   "cost_ratio"])
    for method, errors in metrics.estimator_errors.items():
        for kind, error in errors.items():
            table.rows.append([Label(METHOD_NAMES.get(method, method), method), Label(KIND_NAMES.get(kind, kind), kind),
                               error.fitness_mae_pp, error.task_mae_pp, float(error.candidates),
                               float(metrics.items.anchors_total), metrics.items.total / metrics.items.anchors_total])
    table.notes.append("Errors over the distinct candidates of the full-data search, whose every item response is "
                       "known: each estimator computed from the candidate's anchor responses (no extra forward pass).")
    if metrics.audit_errors:
        audit = "; ".join(f"{METHOD_NAMES.get(m, m)} {KIND_NAMES.get(k, k)} {e.fitness_mae_pp:.2f} "
                          f"({e.candidates} candidates)" for m, by_kind in metrics.audit_errors.items()
                          for k, e in by_kind.items())
        table.notes.append(f"On each estimated search's own candidates (audit, all items evaluated): {audit}.")
    return table


def items_table(model: str, metrics: Merge3Metrics, zeroshot: dict[str, float] | None,
                finetuned: dict[str, float]) -> Table:
    """The endpoints on the validation items against the test data: how representative the items are."""
    tasks = metrics.tasks
    table = Table(f"merge3_items_{safe_name(model)}",
                  f"MERGE3 ({model}): the endpoints' accuracy (%) on the validation items and on the test data",
                  ["", *tasks, "mean"], ["row", *tasks, "mean"])
    val = metrics.population.val_accuracy
    rows = [("Pretrained, validation items", "pretrained_val", val.get("pretrained"))]
    if zeroshot and all(t in zeroshot for t in tasks):
        rows.append(("Pretrained, test (zero-shot)", "pretrained_test", {t: zeroshot[t] for t in tasks}))
    own = {t: val[f"finetuned:{t}"][t] for t in tasks if f"finetuned:{t}" in val}
    if len(own) == len(tasks):
        rows.append(("Fine-tuned on the task, validation items", "finetuned_val", own))
    if len(finetuned) == len(tasks):
        rows.append(("Fine-tuned on the task, test", "finetuned_test", finetuned))
    for text, key, values in rows:
        if values is not None:
            table.rows.append([Label(text, key), *(values[t] for t in tasks), fmean(values[t] for t in tasks)])
    if metrics.items.split == "pretrain":
        table.notes.append("The items come from the pretrain split: disjoint from the fine-tuning train and test "
                           "splits, but seen (with their class names) by the contrastive pretraining, so the "
                           "pretrained model may do better on them than on test.")
    return table


def figure_fitness(merge3: dict[str, Merge3Metrics]) -> bytes:
    """Best fitness so far against the generation, one line per search, one panel per model."""
    from weaving.report.figures import OKABE_ITO, STYLE, plt, png_bytes

    colours = {"full": OKABE_ITO["black"], "anchors": OKABE_ITO["orange"], "mp_irt": OKABE_ITO["sky_blue"],
               "gmp_irt": OKABE_ITO["blue"]}
    styles = ["-", "--", ":"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(merge3), figsize=(5.5 * len(merge3), 3.8), squeeze=False)
        for ax, (model, metrics) in zip(axes[0], merge3.items()):
            for m, (method, by_kind) in enumerate(metrics.searches.items()):
                for kind, record in by_kind.items():
                    xs = [g.generation for g in record.trace]
                    ys = [g.best_so_far for g in record.trace]
                    colour = colours.get(kind, OKABE_ITO["purple"])
                    ax.plot(xs, ys, marker="o", markersize=3, color=colour, linestyle=styles[m % len(styles)],
                            label=f"{KIND_NAMES.get(kind, kind)}" + (f" ({method})" if len(metrics.searches) > 1 else ""))
                    ax.plot([xs[-1] + 0.35], [record.final.val_mean], marker="D", markersize=6, color=colour,
                            markerfacecolor="none", linestyle="none")
            ax.set_xlabel("generation (diamonds: the best merge on all items)")
            ax.set_ylabel("best fitness so far (%)")
            ax.set_title(model)
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return png_bytes(fig)


# --- claims --------------------------------------------------------------------------------------------------------

def _models_note(models: list[str]) -> str:
    return models[0] if len(models) == 1 else f"mean over {', '.join(models)}"


def claim_cost(merge3: dict[str, Merge3Metrics]) -> Claim:
    statement = ("MERGE3's IRT estimator cuts the fitness evaluation cost at least 25x, and the search with the "
                 "estimated fitness ends within 1 point of the search with full-data fitness.")
    rule = (f"cost_ratio = items evaluated per candidate with full-data fitness / with the reported estimated fitness "
            f"(gmp-IRT unless params merge3.reported says otherwise); final_gap_pp = test accuracy (mean over tasks) "
            f"of the full-data search's final merge minus that of the estimated search's, in points (negative when "
            f"the estimate's search is better); means over models when several. Holds when cost_ratio >= "
            f"{COST_RATIO_TARGET:g} and final_gap_pp <= {FINAL_GAP_TARGET_PP:g} (rounded to 0.01); mixed when one of "
            f"the two; does not hold when neither; not testable without both searches.")
    testable = {m: r for m, r in merge3.items() if r.headline.final_gap_pp is not None and r.headline.cost_ratio}
    if not testable:
        return Claim("merge3_cost", "MERGE3", statement, rule, UNTESTABLE,
                     "not testable: no metrics/<model>/search/merge3.json with a full-data and a reported search",
                     paper=PAPER)
    ratio = fmean(r.headline.cost_ratio for r in testable.values())
    gap = fmean(r.headline.final_gap_pp for r in testable.values())
    parts = [ratio >= COST_RATIO_TARGET, round(gap, 2) <= FINAL_GAP_TARGET_PP]
    verdict = HOLDS if all(parts) else MIXED if any(parts) else FAILS
    reported = sorted({r.headline.reported for r in testable.values()})
    evidence = "; ".join(
        f"{m}: {KIND_NAMES.get(r.headline.reported, r.headline.reported)} evaluates {r.headline.cost_ratio:g}x fewer "
        f"items per candidate and ends at {r.headline.reported_test_mean:.2f}% against {r.headline.full_test_mean:.2f}% "
        f"with full-data fitness (gap {r.headline.final_gap_pp:+.2f} points)" for m, r in testable.items())
    return Claim("merge3_cost", "MERGE3", statement, rule, verdict, evidence,
                 numbers={"cost_ratio": ratio, "final_gap_pp": gap, "reported": reported[0] if len(reported) == 1
                          else reported, "per_model": {m: {"cost_ratio": r.headline.cost_ratio,
                                                           "final_gap_pp": r.headline.final_gap_pp}
                                                       for m, r in testable.items()}},
                 paper=PAPER)


def claim_quality(merge3: dict[str, Merge3Metrics], weave: dict[str, WeaveMetrics]) -> Claim:
    statement = ("The search with estimated fitness ends above Task Arithmetic at its recommended lam "
                 "(with Weight Weaving and the best lam on test, the oracle, beside it).")
    rule = ("gain_pp = test accuracy (mean over tasks) of the reported estimated search's final merge minus Task "
            "Arithmetic's at its recommended lam (the weave stage's, else the merge3 stage's own measurement); means "
            "over models when several. Holds when gain_pp > 0 (rounded to 0.01); does not hold otherwise; not "
            "testable without the estimated search.")
    testable = {m: Comparison(r, weave.get(m)) for m, r in merge3.items() if r.headline.reported_test_mean is not None}
    if not testable:
        return Claim("merge3_quality", "MERGE3", statement, rule, UNTESTABLE,
                     "not testable: no metrics/<model>/search/merge3.json with the reported search", paper=PAPER)
    reported = fmean(c.reported for c in testable.values())
    recommended = fmean(c.recommended for c in testable.values())
    gain = reported - recommended
    numbers: dict = {"reported_test_mean": reported, "ta_recommended_mean": recommended, "gain_pp": gain}
    full = [c.full for c in testable.values() if c.full is not None]
    if len(full) == len(testable):
        numbers["full_test_mean"] = fmean(full)
    for key in ("weaving", "oracle"):
        values = [getattr(c, key) for c in testable.values()]
        if all(v is not None for v in values):
            numbers[f"{key}_mean"] = fmean(values)
    verdict = HOLDS if round(gain, 2) > 0 else FAILS
    evidence = "; ".join(
        f"{m}: {c.reported:.2f}% against Task Arithmetic at lam = {c.recommended_lam:g} {c.recommended:.2f}% "
        f"({c.reported - c.recommended:+.2f})"
        + (f", Weight Weaving {c.weaving:.2f}%" if c.weaving is not None else "")
        + (f", oracle lam = {c.oracle_lam:g} {c.oracle:.2f}%" if c.oracle is not None else "")
        + (f", full-data search {c.full:.2f}%" if c.full is not None else "") for m, c in testable.items())
    return Claim("merge3_quality", "MERGE3", statement, rule, verdict, evidence, numbers=numbers, paper=PAPER)


def claim_estimator(merge3: dict[str, Merge3Metrics]) -> Claim:
    statement = "gmp-IRT estimates a candidate's fitness more accurately than the plain mean over its anchors."
    rule = ("Mean absolute error of the fitness (mean over tasks, points) over the full-data search's candidates, "
            "gmp-IRT against the anchor mean (the first method; means over models when several). Holds when "
            "gmp-IRT's is lower (rounded to 0.01); does not hold otherwise; not testable without a full-data search.")
    testable = {m: r.headline.mae_pp for m, r in merge3.items()
                if {"anchors", "gmp_irt"} <= set(r.headline.mae_pp)}
    if not testable:
        return Claim("merge3_estimator", "MERGE3", statement, rule, UNTESTABLE,
                     "not testable: no estimator errors (the full-data search did not run)", paper=PAPER)
    kinds = sorted(set.intersection(*(set(v) for v in testable.values())))
    mae = {k: fmean(v[k] for v in testable.values()) for k in kinds}
    difference = mae["gmp_irt"] - mae["anchors"]
    verdict = HOLDS if round(difference, 2) < 0 else FAILS
    evidence = (f"fitness MAE ({_models_note(list(testable))}): "
                + ", ".join(f"{KIND_NAMES.get(k, k)} {v:.2f}" for k, v in mae.items()) + " points")
    return Claim("merge3_estimator", "MERGE3", statement, rule, verdict, evidence,
                 numbers={"mae_pp": mae, "gmp_minus_anchors_pp": difference}, paper=PAPER)


def _summary_line(model: str, metrics: Merge3Metrics, compare: Comparison) -> str:
    head = metrics.headline
    parts = []
    if head.cost_ratio is not None:
        met = head.cost_ratio >= COST_RATIO_TARGET
        parts.append(f"cost ratio {head.cost_ratio:g}x (target >= {COST_RATIO_TARGET:g}x: {'met' if met else 'missed'})")
    if head.final_gap_pp is not None:
        met = round(head.final_gap_pp, 2) <= FINAL_GAP_TARGET_PP
        parts.append(f"{KIND_NAMES.get(head.reported, head.reported)} search {head.reported_test_mean:.2f}% against "
                     f"{head.full_test_mean:.2f}% with full-data fitness, gap {head.final_gap_pp:+.2f} points (target "
                     f"<= {FINAL_GAP_TARGET_PP:g}: {'met' if met else f'missed by {head.final_gap_pp - FINAL_GAP_TARGET_PP:.2f}'})")
        record = metrics.reported_search
        if not met and record is not None:
            parts.append(f"its best genome scored {record.best_fitness:.2f} by the estimate but "
                         f"{record.final.val_mean:.2f}% on all validation items (the full-data search's best: "
                         f"{metrics.full_search.final.val_mean:.2f}%): the selection favours candidates whose "
                         f"{metrics.items.anchors_per_task} anchors per task happen to be right")
    if head.reported_test_mean is not None:
        gain = head.reported_test_mean - compare.recommended
        parts.append(f"{gain:+.2f} points against Task Arithmetic at lam = {compare.recommended_lam:g} "
                     f"({compare.recommended:.2f}%; target above: {'met' if round(gain, 2) > 0 else 'missed'})")
    if {"anchors", "gmp_irt"} <= set(head.mae_pp):
        gmp, anchors = head.mae_pp["gmp_irt"], head.mae_pp["anchors"]
        parts.append(f"fitness MAE gmp-IRT {gmp:.2f} vs anchor mean {anchors:.2f} points (target below: "
                     f"{'met' if round(gmp - anchors, 2) < 0 else f'missed by {gmp - anchors:.2f}'})")
    return f"{model}, {METHOD_NAMES.get(head.method, head.method)}: " + "; ".join(parts) + "."


def section(metrics_dir: Path, models: list[str], seed: int | None = None) -> Section:
    """The MERGE3 section from `metrics_dir` (see the module docstring): the weave and fine-tune metrics
    beside it from replicate `seed`, the one the merge3 stage read (params `seed`)."""
    metrics_dir = Path(metrics_dir)
    merge3, weave, zeroshot, finetuned = _read(metrics_dir, models, seed)
    result = Section("MERGE3: evolutionary merging with IRT-estimated fitness")
    missing = [m for m in models if m not in merge3]
    if missing:
        result.text.append(f"no MERGE3 metrics (metrics/<model>/search/merge3.json) for {', '.join(missing)}; "
                           "the merge3 stage did not run for them.")
    for model, metrics in merge3.items():
        result.text.append(_summary_line(model, metrics, Comparison(metrics, weave.get(model))))
        result.tables += [results_table(model, metrics, weave.get(model)), estimator_table(model, metrics),
                          items_table(model, metrics, zeroshot.get(model), finetuned.get(model, {}))]
    if merge3:
        result.figures["merge3_fitness_over_generations.png"] = figure_fitness(merge3)
        result.captions["merge3_fitness_over_generations.png"] = (
            "MERGE3: best fitness found so far against the generation (the first one is the random initial "
            "population), one line per search; full-data fitness is the mean validation accuracy over tasks, the "
            "others are its estimates from the anchors (what each search optimised, not test accuracy); the hollow "
            "diamonds give each search's best merge on all the validation items.")
    result.claims = [claim_cost(merge3), claim_quality(merge3, weave), claim_estimator(merge3)]
    return result
