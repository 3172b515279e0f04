"""The MERGE3 stage's pipeline side: the params block, the validation items, the metrics file, the report section.

Metrics are built by hand here (not by `run_merge3`) and the expected table cells and claim numbers are
recomputed from the per-task values; verdicts are checked on hand cases on both sides of each rule's boundary.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from statistics import fmean

import numpy as np
import pytest
from params_fixtures import write

from weaving.errors import InputError
from weaving.metrics import MetricsFileError
from weaving.metrics_search import Merge3Metrics
from weaving.report.claims import FAILS, HOLDS, MIXED, UNTESTABLE
from weaving_pipeline.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["mnist", "optdigits", "textures"]


# --- params --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["params.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"])
def test_every_profile_has_a_valid_merge3_block(profile: str) -> None:
    params = load_params(ROOT / profile)
    merge3 = params.merge3
    assert merge3.methods and merge3.fitness and merge3.anchors_per_task <= merge3.items.per_task
    assert merge3.items.split in ("pretrain", "val")
    limit = getattr(params.data.limits, merge3.items.split)
    assert limit is None or 0 < merge3.items.per_task <= limit


def test_the_embedded_profile_meets_the_cost_target_by_construction() -> None:
    merge3 = load_params(ROOT / "params.yaml").merge3
    assert merge3.items.per_task / merge3.anchors_per_task >= 25
    assert set(merge3.fitness) == {"full", "anchors", "mp_irt", "gmp_irt"} and merge3.reported == "gmp_irt"
    assert (merge3.search.population, merge3.search.generations) == (25, 7)  # the reference's GA


def test_the_params_names_agree_with_the_library() -> None:
    from weaving.search import FITNESS_KINDS, SEARCH_METHODS, minimum_population_size
    from weaving.search.estimators import ESTIMATED_KINDS
    from weaving.search.evolve import ALGORITHMS
    from weaving_pipeline import params_merge3

    assert params_merge3.SEARCH_METHODS == SEARCH_METHODS
    assert params_merge3.FITNESS_KINDS == FITNESS_KINDS
    assert params_merge3.ESTIMATED_KINDS == ESTIMATED_KINDS
    assert params_merge3.ALGORITHMS == ALGORITHMS
    for tasks in (1, 3, 6, 8, 20):
        for dims in (1, 2, 4, 6):
            assert params_merge3.minimum_population_size(tasks, dims) == minimum_population_size(tasks, dims)


def _set(*path_and_value):
    *path, value = path_and_value

    def mutate(params: dict) -> None:
        target = params
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_set("merge3", "anchors_per_task", 101), ["merge3.anchors_per_task", "101 anchors", "100 items"]),
        (_set("merge3", "population_size", 2), ["merge3.population_size", "below the stated minimum 3"]),
        (_set("merge3", "methods", ["task_arithmetic", "slerp"]), ["merge3.methods.1", "task_arithmetic", "dare"]),
        (_set("merge3", "fitness", ["full", "irt"]), ["merge3.fitness.1", "gmp_irt"]),
        (_set("merge3", "fitness", ["full", "full"]), ["merge3.fitness", "more than once"]),
        (_set("merge3", "coefficient_bounds", [1.0, 0.0]), ["merge3.coefficient_bounds", "reversed"]),
        (_set("merge3", "coefficient_bounds", [0.0, 1.05]), ["merge3.coefficient_bounds", "whole number"]),
        (_set("merge3", "density_bounds", [0.0, 1.0]), ["merge3.density_bounds", "(0, 1]"]),
        (_set("merge3", "items", "split", "test"), ["merge3.items.split", "pretrain", "val"]),
        (_set("merge3", "items", "split", "val"), ["merge3.items.split", "data.limits.val is 0"]),
        (_set("merge3", "items", "per_task", 5000), ["merge3.items.per_task", "data.limits.pretrain = 3000"]),
        (_set("merge3", "reported", "full"), ["merge3.reported", "anchors", "gmp_irt"]),
        (_set("merge3", "fitness", ["full", "anchors"]), ["merge3.reported", "'gmp_irt' is not one of"]),
        (_set("merge3", "search", "algorithm", "cmaes"), ["merge3.search.algorithm", "ga", "nsga2"]),
        (_set("merge3", "search", "population", 1), ["merge3.search.population"]),
        (_set("merge3", "anchor_per_task", 4), ["merge3.anchor_per_task", "unknown key", "anchors_per_task"]),
        (lambda p: p.pop("merge3"), ["merge3", "required key is missing"]),
    ],
    ids=["anchors", "population", "method", "kind", "repeated-kind", "reversed", "grid", "density", "split-test",
         "split-empty", "per-task-cap", "reported-full", "reported-unsearched", "algorithm", "ga-population",
         "typo", "missing"],
)
def test_bad_params_name_the_key(tmp_path, default, mutate, expected) -> None:
    params = copy.deepcopy(default)
    mutate(params)
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, params))
    for fragment in expected:
        assert fragment in str(error.value), f"{fragment!r} not in {error.value!s}"


def test_the_population_minimum_follows_the_tasks_and_dimensions(tmp_path, default) -> None:
    """6 tasks: 2 dimensions need 10 subjects (3 merges), 6 dimensions 14 (7 merges); at the minimum it validates."""
    params = copy.deepcopy(default)
    params["merge3"].update(irt_dims=6, population_size=7)
    assert load_params(write(tmp_path, params)).merge3.population_size == 7
    params["merge3"]["population_size"] = 6
    with pytest.raises(ParamsError, match=r"merge3\.population_size: 6 is below the stated minimum 7.*14 subjects"):
        load_params(write(tmp_path, params))


# --- the validation items ------------------------------------------------------------------------------------------

def test_the_item_slice_is_seeded_class_proportional_and_per_task() -> None:
    from weaving_pipeline.search_inputs import item_indices

    labels = np.repeat(np.arange(4), [40, 30, 20, 10])  # shares 0.4, 0.3, 0.2, 0.1
    index = item_indices(labels, 20, seed=0, task="mnist")
    assert len(set(index.tolist())) == 20 and list(index) == sorted(index)
    assert np.bincount(labels[index], minlength=4).tolist() == [8, 6, 4, 2]
    assert np.array_equal(index, item_indices(labels, 20, seed=0, task="mnist"))
    assert not np.array_equal(index, item_indices(labels, 20, seed=1, task="mnist"))
    assert not np.array_equal(index, item_indices(labels, 20, seed=0, task="optdigits"))


def test_items_that_meet_train_or_test_are_refused() -> None:
    from weaving_pipeline.search_inputs import check_items_disjoint

    items = np.array(["train/1", "train/5", "train/9"])
    check_items_disjoint("mnist", "pretrain", items, {"train": np.array(["train/2"]), "test": np.array(["test/1"])})
    with pytest.raises(InputError, match=r"merge3\.items\.split: the 'pretrain' items of mnist overlap its test "
                                         r"split on 1 image"):
        check_items_disjoint("mnist", "pretrain", items, {"train": np.array(["train/2"]),
                                                          "test": np.array(["train/9", "test/4"])})


# --- hand-made metrics ---------------------------------------------------------------------------------------------

def final(test: dict, val: dict | None = None) -> dict:
    val = val or {t: v + 1.0 for t, v in test.items()}
    return {"val_accuracy": val, "val_mean": fmean(val.values()), "test_accuracy": test, "test_mean": fmean(test.values())}


def search(kind: str, test: dict, items_per_candidate: int, distinct: int = 30) -> dict:
    return {
        "method": "task_arithmetic", "kind": kind, "algorithm": "ga", "best_levels": [3, 4, 5],
        "best_genome": {"coefficients": {"mnist": 0.3, "optdigits": 0.4, "textures": 0.5}},
        "best_fitness": 60.0, "best_fitness_per_task": {t: 60.0 for t in TASKS},
        "trace": [{"generation": 1, "evaluations": 10, "best_so_far": 55.0, "best_so_far_levels": [1, 2, 3],
                   "generation_mean": 50.0, "generation_best": 55.0, "seconds": 1.0},
                  {"generation": 2, "evaluations": 10, "best_so_far": 60.0, "best_so_far_levels": [3, 4, 5],
                   "generation_mean": 56.0, "generation_best": 60.0, "seconds": 1.0}],
        "fitness_calls": 40, "distinct_candidates": distinct, "items_per_candidate": items_per_candidate,
        "item_evaluations": distinct * items_per_candidate, "items_forwarded": distinct * items_per_candidate,
        "seconds": 2.0, "final": final(test),
    }


FULL = {"mnist": 80.0, "optdigits": 70.0, "textures": 40.0}       # mean 63.33
GMP = {"mnist": 79.0, "optdigits": 70.0, "textures": 39.5}        # mean 62.83: gap 0.5
MAE = {"anchors": 5.0, "mp_irt": 4.0, "gmp_irt": 3.0}


def merge3_data(full: dict | None = None, gmp: dict | None = None, mae: dict | None = None, per_task: int = 100,
                anchors: int = 4, recommended: dict | None = None) -> dict:
    full, gmp, mae = full or FULL, gmp or GMP, mae or MAE
    total, anchors_total = per_task * len(TASKS), anchors * len(TASKS)
    kinds = ["full", "anchors", "mp_irt", "gmp_irt"]
    tests = {"full": full, "anchors": {t: v - 1 for t, v in full.items()}, "mp_irt": {t: v - 2 for t, v in full.items()},
             "gmp_irt": gmp}
    searches = {k: search(k, tests[k], total if k == "full" else anchors_total) for k in kinds}
    errors = {k: {"fitness_mae_pp": v, "task_mae_pp": v + 1, "candidates": 30} for k, v in mae.items()}
    recommended = recommended or {"mnist": 60.0, "optdigits": 50.0, "textures": 35.0}
    population = {"pretrained": {t: 30.0 for t in TASKS}, **{f"finetuned:{t}": {u: 90.0 if u == t else 20.0
                                                                                for u in TASKS} for t in TASKS}}
    full_mean, gmp_mean = fmean(full.values()), fmean(gmp.values())
    return copy.deepcopy({
        "model": "tiny-clip", "tasks": TASKS,
        "items": {"split": "pretrain", "seed": 0, "per_task": {t: per_task for t in TASKS}, "total": total,
                  "anchors_per_task": anchors, "anchors_total": anchors_total,
                  "anchors": {t: list(range(anchors)) for t in TASKS}},
        "config": {"methods": ["task_arithmetic"], "fitness_kinds": kinds, "reported": "gmp_irt",
                   "population_size": 6, "irt_dims": 1, "search_population": 10, "generations": 2,
                   "algorithm": "ga", "coefficient_grid": [0.0, 1.0, 0.1], "density_grid": [0.1, 1.0, 0.1],
                   "seed": 0, "audit": False},
        "population": {"subjects": list(population), "val_mean": {s: fmean(a.values()) for s, a in population.items()},
                       "val_accuracy": population, "item_evaluations": 4 * total, "seconds": 1.0},
        "irt": {"dims": 1, "subjects": 10, "iterations": 50, "negative_log_posterior": 123.0,
                "subject_accuracy_mae_pp": 1.5, "seconds": 0.5},
        "cost_ratio": {k: total / (total if k == "full" else anchors_total) for k in kinds},
        "searches": {"task_arithmetic": searches},
        "estimator_errors": {"task_arithmetic": errors},
        "baselines": {"recommended_lam": 0.3, "recommended": final(recommended),
                      "lambdas": [0.0, 0.5, 1.0], "val_means": [30.0, 55.0, 50.0], "best_val_lam": 0.5,
                      "best_val": final({t: v + 2 for t, v in recommended.items()})},
        "headline": {"method": "task_arithmetic", "reported": "gmp_irt", "cost_ratio": per_task / anchors,
                     "full_test_mean": full_mean, "reported_test_mean": gmp_mean, "final_gap_pp": full_mean - gmp_mean,
                     "mae_pp": dict(mae)},
        "seconds": 10.0,
    })


def weave_data(recommended: dict | None = None) -> dict:
    """The weave stage's Task Arithmetic record (multi-task): lams 0.3, 0.5, 1.0, the best on test at 0.5."""
    recommended = recommended or {"mnist": 60.0, "optdigits": 50.0, "textures": 35.0}
    sweep = {t: [recommended[t], recommended[t] + 3, recommended[t] - 10] for t in TASKS}
    woven = {t: recommended[t] + 1 for t in TASKS}
    return {"model": "tiny-clip", "setup": "mtl", "method": "task_arithmetic", "hparams": {},
            "lambdas": [0.3, 0.5, 1.0], "recommended_lam": 0.3, "baseline_lam": 1.0, "tasks": TASKS,
            "baseline": {t: sweep[t][2] for t in TASKS}, "recommended": recommended, "sweep": sweep,
            "weaving": {"avg": {"all": woven}}}


def write_run(folder: Path, merge3: dict | None, weave: dict | None = None) -> Path:
    model = folder / "tiny-clip"
    (model / "search").mkdir(parents=True, exist_ok=True)
    if merge3 is not None:
        (model / "search" / "merge3.json").write_text(json.dumps(merge3))
    if weave is not None:
        (model / "weave" / "task_arithmetic").mkdir(parents=True, exist_ok=True)
        (model / "weave" / "task_arithmetic" / "mtl.json").write_text(json.dumps(weave))
    return folder


def test_a_hand_made_file_validates_and_round_trips(tmp_path: Path) -> None:
    path = write_run(tmp_path, merge3_data()) / "tiny-clip" / "search" / "merge3.json"
    record = Merge3Metrics.read(path)
    assert record.headline.final_gap_pp == pytest.approx(0.5)
    assert record.reported_search.final.test_mean == pytest.approx(fmean(GMP.values()))
    record.write(tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(path.read_text())


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["searches"]["task_arithmetic"]["gmp_irt"]["final"]["test_accuracy"].pop("textures"),
         ["searches.task_arithmetic.gmp_irt.final.test_accuracy", "textures"]),
        (lambda d: d["searches"]["task_arithmetic"]["full"].update(item_evaluations=1),
         ["searches.task_arithmetic.full.item_evaluations", "distinct_candidates x items_per_candidate"]),
        (lambda d: d["searches"]["task_arithmetic"]["anchors"].update(items_per_candidate=300, item_evaluations=9000),
         ["searches.task_arithmetic.anchors.items_per_candidate", "must be 12"]),
        (lambda d: d["cost_ratio"].update(gmp_irt=50.0), ["cost_ratio", "gmp_irt", "25"]),
        (lambda d: d["headline"].update(final_gap_pp=-0.5), ["headline.final_gap_pp", "0.5"]),
        (lambda d: d["searches"]["task_arithmetic"].pop("mp_irt"), ["searches.task_arithmetic", "must hold the kinds"]),
        (lambda d: d["searches"]["task_arithmetic"]["full"]["trace"].reverse(), ["trace", "generations 1, 2"]),
        (lambda d: d["baselines"]["val_means"].pop(), ["baselines.val_means", "one accuracy per lam"]),
        (lambda d: d["searches"]["task_arithmetic"]["full"]["final"].update(test_mean=101.0),
         ["searches.task_arithmetic.full.final.test_mean", "[0, 100]"]),
    ],
    ids=["missing-task", "evaluations", "per-candidate", "ratio", "gap", "kind", "trace", "baseline", "range"],
)
def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path, edit, expected) -> None:
    data = merge3_data()
    edit(data)
    path = write_run(tmp_path, data) / "tiny-clip" / "search" / "merge3.json"
    with pytest.raises(MetricsFileError) as error:
        Merge3Metrics.read(path)
    assert "merge3.json" in str(error.value)
    for fragment in expected:
        assert fragment in str(error.value), f"{fragment!r} not in {error.value!s}"


def test_the_builder_trims_a_run_merge3_result_into_the_model() -> None:
    """`merge3_metrics` on a result shaped like `run_merge3`'s: candidates and population genomes dropped,
    a NaN generation mean becomes absent, the headline computed from the records."""
    from weaving.metrics_search import merge3_metrics

    data = merge3_data()
    searches = copy.deepcopy(data["searches"])
    for record in searches["task_arithmetic"].values():
        record["candidates"] = [{"generation": 1, "levels": [0, 0, 0], "fitness": [1.0]}]
    searches["task_arithmetic"]["full"]["trace"][1]["generation_mean"] = float("nan")
    result = {
        "tasks": TASKS,
        "config": {**{k: v for k, v in data["config"].items() if k not in ("reported", "audit")},
                   "ability_prior_scale": 1.0, "audit_estimates": False, "anchors_per_task": 4},
        "items": {k: data["items"][k] for k in ("per_task", "total", "anchors_per_task", "anchors_total", "anchors")},
        "population": {"subjects": data["population"]["subjects"], "genomes": [None] * 4,
                       "val_accuracy": data["population"]["val_accuracy"], "seconds": 1.0,
                       "item_evaluations": data["population"]["item_evaluations"]},
        "irt": {**data["irt"], "endpoint_abilities": {"pretrained": [0.0]}},
        "cost_ratio": data["cost_ratio"],
        "searches": searches,
        "estimator_errors": {"task_arithmetic": {"on_full_search_candidates": data["estimator_errors"]["task_arithmetic"],
                                                 "on_own_candidates": {}}},
    }
    metrics = merge3_metrics("tiny-clip", result, split="pretrain", items_seed=0, reported="gmp_irt",
                             baselines=data["baselines"], seconds=10.0)
    written = metrics.to_json_data()
    assert "candidates" not in written["searches"]["task_arithmetic"]["full"]
    assert "generation_mean" not in written["searches"]["task_arithmetic"]["full"]["trace"][1]
    assert written["headline"] == data["headline"]
    assert "audit_errors" not in written


# --- report section ------------------------------------------------------------------------------------------------

def claims_of(folder: Path) -> dict:
    from weaving.report.search import section

    return {c.id: c for c in section(folder, ["tiny-clip"]).claims}


def test_section_tables_figure_and_claim_numbers(tmp_path: Path) -> None:
    from weaving.report.search import section

    result = section(write_run(tmp_path, merge3_data(), weave_data()), ["tiny-clip"])
    names = [t.name for t in result.tables]
    assert names == ["merge3_tiny-clip", "merge3_estimators_tiny-clip", "merge3_items_tiny-clip"]
    assert set(result.figures) == {"merge3_fitness_over_generations.png"} == set(result.captions)
    assert result.figures["merge3_fitness_over_generations.png"].startswith(b"\x89PNG")

    table = result.tables[0]
    rows = {row[0].key: row for row in table.rows}
    assert list(rows) == ["task_arithmetic:full", "task_arithmetic:anchors", "task_arithmetic:mp_irt",
                          "task_arithmetic:gmp_irt", "ta_recommended", "ta_best_val", "ta_oracle", "weight_weaving"]
    full_mean = fmean(FULL.values())
    mean, gap = table.keys.index("mean"), table.keys.index("gap_to_full_pp")
    assert rows["task_arithmetic:gmp_irt"][1:4] == [GMP[t] for t in TASKS]
    assert rows["task_arithmetic:gmp_irt"][gap] == pytest.approx(0.5)
    assert rows["task_arithmetic:gmp_irt"][table.keys.index("cost_ratio")] == 25.0
    assert rows["task_arithmetic:full"][table.keys.index("item_evaluations")] == str(30 * 300)
    assert rows["task_arithmetic:gmp_irt"][table.keys.index("best_fitness")] == 60.0
    assert rows["ta_oracle"][mean] == pytest.approx(fmean([63.0, 53.0, 38.0]))     # lam 0.5 on test
    assert "lam = 0.5" in rows["ta_oracle"][0].text
    assert rows["weight_weaving"][mean] == pytest.approx(fmean([61.0, 51.0, 36.0]))
    assert rows["ta_recommended"][gap] == pytest.approx(full_mean - fmean([60.0, 50.0, 35.0]))
    assert "lam = 0.5 chosen on the items" in rows["ta_best_val"][0].text

    estimators = {row[1].key: row for row in result.tables[1].rows}
    assert estimators["gmp_irt"][2] == 3.0 and estimators["anchors"][2] == 5.0
    assert estimators["gmp_irt"][6] == pytest.approx(25.0)
    items = {row[0].key: row for row in result.tables[2].rows}
    assert items["finetuned_val"][1:4] == [90.0, 90.0, 90.0] and items["pretrained_val"][4] == pytest.approx(30.0)

    claims = {c.id: c for c in result.claims}
    cost = claims["merge3_cost"]
    assert cost.numbers["cost_ratio"] == pytest.approx(25.0)
    assert cost.numbers["final_gap_pp"] == pytest.approx(0.5)
    assert cost.verdict == HOLDS
    quality = claims["merge3_quality"]
    assert quality.numbers["ta_recommended_mean"] == pytest.approx(fmean([60.0, 50.0, 35.0]))
    assert quality.numbers["gain_pp"] == pytest.approx(fmean(GMP.values()) - fmean([60.0, 50.0, 35.0]))
    assert quality.numbers["oracle_mean"] == pytest.approx(fmean([63.0, 53.0, 38.0]))
    assert quality.verdict == HOLDS
    assert claims["merge3_estimator"].numbers["gmp_minus_anchors_pp"] == pytest.approx(-2.0)
    assert claims["merge3_estimator"].verdict == HOLDS
    assert any("cost ratio 25x (target >= 25x: met)" in line for line in result.text)


@pytest.mark.parametrize(
    "per_task, anchors, gmp, verdict",
    [(100, 4, GMP, HOLDS),                                                    # 25x, gap 0.50
     (100, 4, {"mnist": 78.0, "optdigits": 70.0, "textures": 39.0}, HOLDS),   # gap exactly 1.00
     (100, 4, {"mnist": 77.0, "optdigits": 70.0, "textures": 39.0}, MIXED),   # gap 1.33
     (100, 5, GMP, MIXED),                                                    # 20x
     (100, 5, {"mnist": 70.0, "optdigits": 60.0, "textures": 30.0}, FAILS),   # 20x, gap 10
     (100, 4, {"mnist": 90.0, "optdigits": 70.0, "textures": 40.0}, HOLDS)],  # the estimate's search better
)
def test_cost_rule(tmp_path: Path, per_task: int, anchors: int, gmp: dict, verdict: str) -> None:
    claim = claims_of(write_run(tmp_path, merge3_data(gmp=gmp, per_task=per_task, anchors=anchors)))["merge3_cost"]
    assert claim.verdict == verdict
    assert claim.numbers["cost_ratio"] == pytest.approx(per_task / anchors)
    assert claim.numbers["final_gap_pp"] == pytest.approx(fmean(FULL.values()) - fmean(gmp.values()))


@pytest.mark.parametrize(
    "recommended, verdict",
    [({"mnist": 60.0, "optdigits": 50.0, "textures": 35.0}, HOLDS),
     (GMP, FAILS),                                                            # a tie is not a win
     ({"mnist": 90.0, "optdigits": 80.0, "textures": 50.0}, FAILS)],
)
def test_quality_rule_against_the_weave_stages_recommended_lam(tmp_path: Path, recommended: dict, verdict: str) -> None:
    folder = write_run(tmp_path, merge3_data(), weave_data(recommended))
    assert claims_of(folder)["merge3_quality"].verdict == verdict


def test_without_the_weave_record_the_stages_own_recommended_lam_is_used(tmp_path: Path) -> None:
    claim = claims_of(write_run(tmp_path, merge3_data(recommended={"mnist": 70.0, "optdigits": 70.0,
                                                                   "textures": 70.0})))["merge3_quality"]
    assert claim.numbers["ta_recommended_mean"] == pytest.approx(70.0)
    assert claim.verdict == FAILS and "oracle_mean" not in claim.numbers


@pytest.mark.parametrize("mae, verdict", [({"anchors": 5.0, "mp_irt": 6.0, "gmp_irt": 4.99}, HOLDS),
                                          ({"anchors": 5.0, "mp_irt": 4.0, "gmp_irt": 5.0}, FAILS),
                                          ({"anchors": 5.0, "mp_irt": 4.0, "gmp_irt": 5.5}, FAILS)])
def test_estimator_rule(tmp_path: Path, mae: dict, verdict: str) -> None:
    claim = claims_of(write_run(tmp_path, merge3_data(mae=mae)))["merge3_estimator"]
    assert claim.verdict == verdict
    assert claim.numbers["mae_pp"] == pytest.approx(mae)


def test_without_merge3_metrics_the_claims_are_not_testable(tmp_path: Path) -> None:
    from weaving.report.search import section

    (tmp_path / "tiny-clip").mkdir()
    result = section(tmp_path, ["tiny-clip"])
    assert not result.tables and not result.figures
    assert {c.id: c.verdict for c in result.claims} == {
        "merge3_cost": UNTESTABLE, "merge3_quality": UNTESTABLE, "merge3_estimator": UNTESTABLE}
    assert any("tiny-clip" in line for line in result.text)


def test_the_section_is_registered_and_a_bad_file_stops_it(tmp_path: Path) -> None:
    from weaving.report.sections import SECTIONS, load_sections

    assert SECTIONS["search"] == "search"
    data = merge3_data()
    data["searches"]["task_arithmetic"]["full"]["final"]["test_mean"] = "high"
    with pytest.raises(MetricsFileError, match="merge3.json"):
        load_sections(["search"], write_run(tmp_path, data), ["tiny-clip"])


def test_a_missed_gap_is_stated_with_its_size_and_the_estimates_overshoot(tmp_path: Path) -> None:
    from weaving.report.search import section

    gmp = {"mnist": 77.0, "optdigits": 70.0, "textures": 39.0}                   # gap 1.33
    result = section(write_run(tmp_path, merge3_data(gmp=gmp)), ["tiny-clip"])
    gap = fmean(FULL.values()) - fmean(gmp.values())
    line = next(line for line in result.text if line.startswith("tiny-clip"))
    assert f"gap {gap:+.2f} points (target <= 1: missed by {gap - 1:.2f})" in line
    assert "scored 60.00 by the estimate but 63.00% on all validation items" in line  # val = test + 1 here


def test_the_single_lam_baselines_pick_the_best_lam_on_the_items() -> None:
    """A linear encoder at theta_pre = 0 answers class 0 (a small bias); its task vectors make it answer the
    label's class, so every lam > 0 gets all items right. Each lam's accuracy is recomputed here with plain
    torch from `theta_pre + lam * sum_t tau_t`."""
    import torch

    from weaving.search.evaluation import CandidateEvaluator
    from weaving.search.genome import MergeDecoder
    from weaving_pipeline.search_inputs import task_arithmetic_baselines

    pretrained = {"weight": torch.zeros(2, 4)}
    tasks = ("a", "b")
    heads = {t: torch.eye(2) for t in tasks}

    def data(n: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(n, 1, 2, 2, generator=g)
        labels = (images.reshape(n, 4)[:, 0] > images.reshape(n, 4)[:, 1]).long()
        return {"images": images, "labels": labels}

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2, 4))

        def forward(self, x):
            return x.reshape(len(x), 4) @ self.weight.T + 1e-3 * torch.tensor([1.0, 0.0])

    encoder = Flat()
    taus = {"a": {"weight": torch.tensor([[0.0, 1.0, 0, 0], [1.0, 0.0, 0, 0]])},
            "b": {"weight": torch.tensor([[0.0, 0.5, 0, 0], [0.5, 0.0, 0, 0]])}}
    val, test = {t: data(40, i) for i, t in enumerate(tasks)}, {t: data(60, 10 + i) for i, t in enumerate(tasks)}
    evaluator = CandidateEvaluator(encoder, pretrained, heads, val, batch_size=16)
    result = task_arithmetic_baselines(evaluator, MergeDecoder(taus), tasks, test, [0.0, 0.5, 1.0], 0.3)

    def accuracy(lam: float, split: dict) -> float:
        weight = lam * (taus["a"]["weight"] + taus["b"]["weight"])
        per_task = []
        for t in tasks:
            features = split[t]["images"].reshape(-1, 4) @ weight.T + 1e-3 * torch.tensor([1.0, 0.0])
            per_task.append(100.0 * float((features.argmax(-1) == split[t]["labels"]).double().mean()))
        return sum(per_task) / len(per_task)

    assert result["val_means"] == pytest.approx([accuracy(lam, val) for lam in (0.0, 0.5, 1.0)])
    assert result["val_means"][0] < 100.0 == result["val_means"][1]
    assert result["best_val_lam"] == 0.5                                   # the first of the tie with lam = 1
    assert result["best_val"]["test_mean"] == pytest.approx(accuracy(0.5, test))
    assert result["recommended_lam"] == 0.3
    assert result["recommended"]["test_mean"] == pytest.approx(accuracy(0.3, test))
    assert result["recommended"]["val_mean"] == pytest.approx(accuracy(0.3, val))
