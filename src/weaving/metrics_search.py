"""The metrics file of the MERGE3 stage (`merge3@<model>`), typed like `weaving.metrics`.

`Merge3Metrics` (`metrics/<model>/search/merge3.json`): the validation items and anchors, the
IRT response population and fit, one record per searched method and fitness kind (`full`,
`anchors`, `mp_irt`, `gmp_irt`: best genome, per-generation trace, item evaluations spent,
the final merge's validation and test accuracy per task), each estimator's error against
full-data fitness, the Task Arithmetic baselines the stage measures itself (the recommended
lam, and one lam chosen on the validation items) and a headline (cost ratio and final gap of
the reported estimated search against the full-data search). `merge3_metrics` builds it from
`weaving.search.run_merge3`'s result. Checks: every per-task map covers exactly `tasks`;
searches cover the configured methods and kinds; costs, ratios and the headline agree with
the records they summarise. Problems come back as `MetricsFileError` naming the file and the
key. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from weaving.metrics import Accuracy, Count, Name, Number, PerTask, Seconds, _ContractProblems, _Record

__all__ = ["ESTIMATED_KINDS", "FITNESS_KINDS", "Merge3Metrics", "merge3_metrics"]

FITNESS_KINDS = ("full", "anchors", "mp_irt", "gmp_irt")
ESTIMATED_KINDS = ("anchors", "mp_irt", "gmp_irt")
_CLOSE = 1e-9


class _SearchRecord(_Record):
    def to_json_data(self) -> dict:
        """The JSON document; optional keys left out when absent."""
        return self.model_dump(mode="python", exclude_none=True)


class Merge3Items(_Record):
    """The validation items: a seeded class-proportional slice of a prepared split, and the anchors."""

    split: Name = Field(description="the prepared split the items come from (params `merge3.items.split`)")
    seed: int = Field(description="seed of the slice")
    per_task: dict[str, Count] = Field(description="items per task")
    total: Count = Field(description="items over all tasks (N)")
    anchors_per_task: Count = Field(description="anchors per task (n_t)")
    anchors_total: Count = Field(description="anchor items over all tasks (n)")
    anchors: dict[str, list[Count]] = Field(description="each task's anchors, as positions among its items")


class Merge3Config(_Record):
    methods: list[Name] = Field(min_length=1, description="searched merge methods")
    fitness_kinds: list[Name] = Field(min_length=1, description="searched fitness kinds, one search each")
    reported: Name = Field(description="the estimated kind whose search the headline compares with full")
    population_size: Count = Field(description="random merges in the response population")
    irt_dims: Count = Field(description="dimensions of the 2PL model")
    search_population: Count = Field(description="GA (or NSGA-II) population")
    generations: Count = Field(description="generations, the initial one included")
    algorithm: Name = Field(description="`ga` or `nsga2`")
    coefficient_grid: list[Number] = Field(min_length=3, max_length=3, description="[low, high, step]")
    density_grid: list[Number] = Field(min_length=3, max_length=3, description="[low, high, step]")
    seed: int = Field(description="the seed every random choice derives from")
    audit: bool = Field(description="whether the estimated searches' candidates were also evaluated on all items")


class Merge3Population(_Record):
    """The IRT response population: the pretrained model, the fine-tuned endpoints, random merges."""

    subjects: list[Name] = Field(min_length=1)
    val_mean: dict[str, Accuracy] = Field(description="subject -> mean validation accuracy over tasks")
    val_accuracy: dict[str, PerTask] = Field(description="subject -> task -> validation accuracy")
    item_evaluations: Count = Field(description="subjects x items")
    seconds: Seconds


class Merge3IRT(_Record):
    dims: Count
    subjects: Count = Field(description="pretrained, fine-tuned endpoints, random merges")
    iterations: Count = Field(description="L-BFGS iterations of the MAP fit")
    negative_log_posterior: Number
    subject_accuracy_mae_pp: Number = Field(description="mean |observed - predicted| accuracy of the subjects, points")
    seconds: Seconds


class Genome(_SearchRecord):
    coefficients: dict[str, Number]
    densities: dict[str, Number] | None = None


class Generation(_SearchRecord):
    """One generation of a search: fitness calls, best so far (its levels), the generation's mean and best
    fitness (absent when every call of the generation met a genome seen before), wall time."""

    generation: Count
    evaluations: Count
    best_so_far: Number
    best_so_far_levels: list[Count]
    generation_mean: Number | None = None
    generation_best: Number | None = None
    seconds: Seconds


class FinalAccuracy(_Record):
    val_accuracy: PerTask
    val_mean: Accuracy
    test_accuracy: PerTask
    test_mean: Accuracy


class SearchRecord(_SearchRecord):
    """One search: the best genome by its fitness (full-data or estimated), the trace, its cost, its final merge."""

    method: Name
    kind: Name = Field(description="`full`, `anchors`, `mp_irt` or `gmp_irt`")
    algorithm: Name
    best_levels: list[Count] = Field(description="the best genome's grid levels")
    best_genome: Genome = Field(description="per task its coefficient (and density for TIES, DARE)")
    best_fitness: Number = Field(description="the best genome's fitness (mean over tasks, % or estimated %)")
    best_fitness_per_task: dict[str, Number]
    trace: list[Generation] = Field(min_length=1, description="one record per generation")
    fitness_calls: Count = Field(description="fitness calls of the GA (a genome met again is not re-evaluated)")
    distinct_candidates: Count
    items_per_candidate: Count = Field(description="all items for `full`, the anchors otherwise")
    item_evaluations: Count = Field(description="distinct_candidates x items_per_candidate")
    items_forwarded: Count = Field(description="images forward-passed by the search (audit ones included)")
    seconds: Seconds
    final: FinalAccuracy = Field(description="the best genome's merge on all items and on the test sets")


class EstimatorError(_Record):
    fitness_mae_pp: Number = Field(description="mean |estimated - full-data| fitness over the candidates, points")
    task_mae_pp: Number = Field(description="the same per task and candidate")
    candidates: Count


class Baselines(_Record):
    """Task Arithmetic with one lam for every task, measured by the stage on the same items and test data."""

    recommended_lam: Number
    recommended: FinalAccuracy
    lambdas: list[Number] = Field(min_length=1, description="the uniform lams tried on the validation items")
    val_means: list[Accuracy] = Field(min_length=1, description="mean validation accuracy at each lam")
    best_val_lam: Number = Field(description="the lam of highest mean validation accuracy (the first of ties)")
    best_val: FinalAccuracy


class Merge3Headline(_Record):
    method: Name = Field(description="the first configured method")
    reported: Name
    cost_ratio: Number | None = Field(default=None, description="items per candidate, full / reported")
    full_test_mean: Accuracy | None = None
    reported_test_mean: Accuracy | None = None
    final_gap_pp: Number | None = Field(default=None, description="full_test_mean - reported_test_mean")
    mae_pp: dict[str, Number] = Field(default_factory=dict, description="estimator -> fitness MAE (points)")


class Merge3Metrics(_SearchRecord):
    """MERGE3 on the multi-task suite (`weaving.search.run_merge3`)."""

    layout: ClassVar[str] = "metrics/<model>/search/merge3.json"
    writer: ClassVar[tuple[str, str]] = ("merge3@<model>", "stages/merge3.py")

    model: Name = Field(description="the model (params `models`)")
    tasks: list[Name] = Field(min_length=1, description="the multi-task suite (params `suite.mtl`), in order")
    items: Merge3Items = Field(description="the validation items and anchors")
    config: Merge3Config = Field(description="the search's settings (params `merge3`)")
    population: Merge3Population = Field(description="the IRT response population")
    irt: Merge3IRT = Field(description="the 2PL fit on the population's responses")
    cost_ratio: dict[str, Number] = Field(description="kind -> items per candidate, full / this kind")
    searches: dict[str, dict[str, SearchRecord]] = Field(description="method -> kind -> search")
    estimator_errors: dict[str, dict[str, EstimatorError]] = Field(
        description="method -> estimator -> errors on the full-data search's candidates (empty without it)")
    audit_errors: dict[str, dict[str, EstimatorError]] | None = Field(
        default=None, description="method -> estimator -> errors on its own search's candidates (audit only)")
    baselines: Baselines = Field(description="Task Arithmetic with one lam, on the same items and test data")
    headline: Merge3Headline = Field(description="what the report's claims test, for the first method")
    seconds: Seconds = Field(description="the whole stage's wall time")

    @model_validator(mode="after")
    def _consistent(self) -> Merge3Metrics:
        problems = _ContractProblems()
        problems.distinct(("tasks",), self.tasks)
        problems.covers(("items", "per_task"), self.items.per_task, self.tasks)
        problems.covers(("items", "anchors"), self.items.anchors, self.tasks)
        if self.items.total != sum(self.items.per_task.values()):
            problems.add(("items", "total"), f"is {self.items.total} but per_task sums to {sum(self.items.per_task.values())}")
        for subject, per_task in self.population.val_accuracy.items():
            problems.covers(("population", "val_accuracy", subject), per_task, self.tasks)
        config = self.config
        if list(self.searches) != list(config.methods):
            problems.add(("searches",), f"must hold the methods {config.methods}, got {list(self.searches)}")
        for method, by_kind in self.searches.items():
            if list(by_kind) != list(config.fitness_kinds):
                problems.add(("searches", method), f"must hold the kinds {config.fitness_kinds}, got {list(by_kind)}")
            for kind, record in by_kind.items():
                loc = ("searches", method, kind)
                if (record.method, record.kind) != (method, kind):
                    problems.add(loc, f"records method {record.method!r} and kind {record.kind!r}")
                problems.covers((*loc, "best_genome", "coefficients"), record.best_genome.coefficients, self.tasks)
                for key in ("val_accuracy", "test_accuracy"):
                    problems.covers((*loc, "final", key), getattr(record.final, key), self.tasks)
                if record.item_evaluations != record.distinct_candidates * record.items_per_candidate:
                    problems.add((*loc, "item_evaluations"), "must be distinct_candidates x items_per_candidate")
                expected = self.items.total if kind == "full" else self.items.anchors_total
                if record.items_per_candidate != expected:
                    problems.add((*loc, "items_per_candidate"), f"must be {expected} for kind {kind!r}")
                generations = [g.generation for g in record.trace]
                if generations != list(range(1, len(generations) + 1)):
                    problems.add((*loc, "trace"), f"must list generations 1, 2, ... in order, got {generations}")
        if list(self.cost_ratio) != list(config.fitness_kinds):
            problems.add(("cost_ratio",), f"must hold the kinds {config.fitness_kinds}, got {list(self.cost_ratio)}")
        for kind, ratio in self.cost_ratio.items():
            per_candidate = self.items.total if kind == "full" else self.items.anchors_total
            if per_candidate and not math.isclose(ratio, self.items.total / per_candidate, rel_tol=1e-9):
                problems.add(("cost_ratio", kind), f"must be items.total / items per candidate = "
                                                   f"{self.items.total / per_candidate:g}", subscript=True)
        base = self.baselines
        if len(base.val_means) != len(base.lambdas):
            problems.add(("baselines", "val_means"), f"must list one accuracy per lam ({len(base.lambdas)})")
        for key in ("recommended", "best_val"):
            for part in ("val_accuracy", "test_accuracy"):
                problems.covers(("baselines", key, part), getattr(getattr(base, key), part), self.tasks)
        self._check_headline(problems)
        problems.raise_if_any(type(self).__name__)
        return self

    def _check_headline(self, problems: _ContractProblems) -> None:
        head = self.headline
        if head.method != self.config.methods[0] or head.reported != self.config.reported:
            problems.add(("headline",), f"must name the first method {self.config.methods[0]!r} and the reported "
                                        f"kind {self.config.reported!r}")
            return
        expected = headline_numbers(self.searches.get(head.method, {}), head.reported, self.cost_ratio,
                                    self.estimator_errors.get(head.method, {}))
        for key, value in expected.items():
            given = getattr(head, key)
            same = (given is None and value is None) or (
                given is not None and value is not None and (
                    math.isclose(given, value, abs_tol=_CLOSE) if not isinstance(value, dict)
                    else set(given) == set(value) and all(math.isclose(given[k], value[k], abs_tol=_CLOSE) for k in value)))
            if not same:
                problems.add(("headline", key), f"must be {value!r} (from the search records), got {given!r}")

    @property
    def reported_search(self) -> SearchRecord | None:
        return self.searches[self.headline.method].get(self.headline.reported)

    @property
    def full_search(self) -> SearchRecord | None:
        return self.searches[self.headline.method].get("full")


def headline_numbers(searches: Mapping[str, Any], reported: str, cost_ratio: Mapping[str, float],
                     errors: Mapping[str, Any]) -> dict[str, Any]:
    """The headline of one method's searches: cost ratio of the reported kind, both final test means, the gap
    (full minus reported, points; None without both searches) and each estimator's fitness MAE."""

    def test_mean(kind: str) -> float | None:
        record = searches.get(kind)
        if record is None:
            return None
        return record.final.test_mean if hasattr(record, "final") else record["final"]["test_mean"]

    full, estimated = test_mean("full"), test_mean(reported)
    mae = {kind: (e.fitness_mae_pp if hasattr(e, "fitness_mae_pp") else e["fitness_mae_pp"]) for kind, e in errors.items()}
    return {
        "cost_ratio": cost_ratio.get(reported) if "full" in cost_ratio else None,
        "full_test_mean": full,
        "reported_test_mean": estimated,
        "final_gap_pp": full - estimated if full is not None and estimated is not None else None,
        "mae_pp": mae,
    }


def _generation(record: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in ("generation_mean", "generation_best"):
        if out.get(key) is not None and not math.isfinite(out[key]):
            out[key] = None
    return out


def merge3_metrics(model: str, result: Mapping[str, Any], *, split: str, items_seed: int, reported: str,
                   baselines: Mapping[str, Any], seconds: float) -> Merge3Metrics:
    """The metrics file from `run_merge3`'s `result` (trimmed: no candidates, no population genomes),
    the item slice's `split` and seed, the `reported` estimated kind and the stage's `baselines`."""
    config = dict(result["config"])
    kinds = list(config.pop("fitness_kinds"))
    config.pop("ability_prior_scale", None)
    audit = config.pop("audit_estimates")
    population = result["population"]
    searches = {}
    for method, by_kind in result["searches"].items():
        searches[method] = {}
        for kind, record in by_kind.items():
            kept = {k: v for k, v in record.items() if k != "candidates"}
            kept["trace"] = [_generation(g) for g in record["trace"]]
            searches[method][kind] = kept
    errors = {m: dict(e.get("on_full_search_candidates", {})) for m, e in result["estimator_errors"].items()}
    errors = {m: e for m, e in errors.items() if e}
    audit_errors = {m: dict(e["on_own_candidates"]) for m, e in result["estimator_errors"].items()
                    if e.get("on_own_candidates")}
    method = config["methods"][0]
    cost_ratio = {kind: result["cost_ratio"][kind] for kind in kinds}
    data = {
        "model": model,
        "tasks": list(result["tasks"]),
        "items": {"split": split, "seed": items_seed, "per_task": result["items"]["per_task"],
                  "total": result["items"]["total"], "anchors_per_task": result["items"]["anchors_per_task"],
                  "anchors_total": result["items"]["anchors_total"], "anchors": result["items"]["anchors"]},
        "config": {"methods": config["methods"], "fitness_kinds": kinds, "reported": reported,
                   "population_size": config["population_size"], "irt_dims": config["irt_dims"],
                   "search_population": config["search_population"], "generations": config["generations"],
                   "algorithm": config["algorithm"], "coefficient_grid": config["coefficient_grid"],
                   "density_grid": config["density_grid"], "seed": config["seed"], "audit": audit},
        "population": {"subjects": population["subjects"],
                       "val_mean": {s: sum(a.values()) / len(a) for s, a in population["val_accuracy"].items()},
                       "val_accuracy": population["val_accuracy"],
                       "item_evaluations": population["item_evaluations"], "seconds": population["seconds"]},
        "irt": {k: result["irt"][k] for k in ("dims", "subjects", "iterations", "negative_log_posterior",
                                              "subject_accuracy_mae_pp", "seconds")},
        "cost_ratio": cost_ratio,
        "searches": searches,
        "estimator_errors": errors,
        "audit_errors": audit_errors or None,
        "baselines": dict(baselines),
        "headline": {"method": method, "reported": reported,
                     **headline_numbers(searches[method], reported, cost_ratio, errors.get(method, {}))},
        "seconds": seconds,
    }
    return Merge3Metrics.model_validate(data)
