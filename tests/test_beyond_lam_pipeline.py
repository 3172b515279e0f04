"""Weight Weaving beyond lam in the pipeline (issue 14 items 3-4): params, the weave protocol's variants,
the report's table and claims row. Woven vectors are checked against the members built and pooled by hand
(docs/merging.md), the report's numbers against means computed here."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from params_fixtures import write
from report_fixtures import make_run

from weaving import merge
from weaving.experiment import Scenario, evaluate_method
from weaving.metrics import WeaveExtension
from weaving.report import load_metrics
from weaving.report.beyond import beyond_lam_table, claim_beyond_lam, variant_label
from weaving.report.claims import FAILS, HOLDS, MIXED, UNTESTABLE
from weaving_pipeline.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parent.parent
LAMBDAS = [0.5, 1.0]


def _taus(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)} for i in range(3)}


def _recorder():
    """An `evaluate` that keeps every vector it is asked to score and returns a fixed accuracy."""
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(vector, task):
        seen.append({k: v.clone() for k, v in vector.items()})
        return 50.0

    return seen, evaluate


def _run(method: str, hparams: dict, **extra) -> tuple[dict, list]:
    seen, evaluate = _recorder()
    taus = _taus()
    result = evaluate_method(method, hparams, taus, [Scenario(members=tuple(taus), tasks=("all",))],
                             lambdas=LAMBDAS, recommended_lam=1.0, poolings=["avg"], pool_over=["all"], seed=0,
                             evaluate=evaluate, **extra)
    return result, seen


def test_a_hyper_parameter_space_is_the_average_of_the_taus_and_every_scaled_merge() -> None:
    """lam x density over A*: members are the T task vectors and lam * TIES(taus, 1, density) for every
    (density, lam) point; avg pooling is their mean."""
    taus = list(_taus().values())
    result, seen = _run("ties", {"density": 0.3}, space={"density": [0.2, 0.5]})
    assert list(result["extensions"]) == ["lam_x_density"]
    assert result["extensions"]["lam_x_density"]["space"] == {"density": [0.2, 0.5]}
    members = [tau for tau in taus]
    for density in (0.2, 0.5):
        merged = merge("ties", taus, lam=1.0, density=density)
        members += [{k: lam * v for k, v in merged.items()} for lam in LAMBDAS]
    expected = {k: torch.stack([m[k] for m in members]).mean(0) for k in taus[0]}
    woven = seen[-1]
    for key in expected:
        torch.testing.assert_close(woven[key], expected[key], rtol=1e-5, atol=1e-6)


def test_a_method_as_pooling_merges_the_members_by_that_method() -> None:
    """TIES as the pooling of Task Arithmetic's weave: TIES at lam 1 over the taus and lam * TA(taus, 1)."""
    taus = list(_taus().values())
    result, seen = _run("task_arithmetic", {}, method_poolings={"ties": {"density": 0.4}})
    assert result["extensions"]["ties_pooling"]["pooling"] == "ties"
    assert result["extensions"]["ties_pooling"]["pooling_params"] == {"density": 0.4}
    merged = {k: sum(t[k] for t in taus) for k in taus[0]}
    members = taus + [{k: lam * v for k, v in merged.items()} for lam in LAMBDAS]
    expected = merge("ties", members, lam=1.0, density=0.4)
    for key in expected:
        torch.testing.assert_close(seen[-1][key], expected[key], rtol=1e-5, atol=1e-6)


def test_variants_are_scored_on_every_task_with_intervals_against_lam_only() -> None:
    g = torch.Generator().manual_seed(1)
    taus = _taus()
    tasks = ("a", "b")

    def evaluate(vector, task):
        return torch.rand(200, generator=g) < 0.6

    result = evaluate_method("ties", {"density": 0.3}, taus, [Scenario(members=tuple(taus), tasks=tasks)],
                             lambdas=LAMBDAS, recommended_lam=1.0, poolings=["avg"], pool_over=["all"], seed=0,
                             evaluate=evaluate, bootstrap={"resamples": 100, "level": 0.9, "seed": 0},
                             space={"density": [0.2]}, method_poolings={"tsv": {}})
    assert set(result["extensions"]) == {"lam_x_density", "tsv_pooling"}
    for name, variant in result["extensions"].items():
        assert set(variant["accuracy"]) == set(tasks)
        interval = result["intervals"]["extensions"][name]
        mean = sum(variant["accuracy"].values()) / 2
        assert interval["accuracy"]["estimate"] == pytest.approx(mean)
        lam_only = sum(result["weaving"]["avg"]["all"].values()) / 2
        assert interval["gain_over_lam_only"]["estimate"] == pytest.approx(mean - lam_only)
        assert interval["gain"]["low"] <= interval["gain"]["estimate"] <= interval["gain"]["high"]


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["method_params"]["ties"].__setitem__("space", {"dens": [0.1]}), "method_params.ties.space"),
    (lambda p: p["method_params"]["ties"].__setitem__("space", {"density": [1.5]}), "method_params.ties.space"),
    (lambda p: p["method_params"]["ties"].__setitem__("space", {"density": []}), "method_params.ties.space"),
    (lambda p: p["weave"].__setitem__("method_poolings", {"nope": {}}), "weave.method_poolings.nope"),
    (lambda p: p["weave"].__setitem__("method_poolings", {"ties": {"density": 3}}), "weave.method_poolings.ties"),
    (lambda p: p["weave"].__setitem__("method_poolings", {"tsv": {"bogus": 1}}), "weave.method_poolings.tsv"),
])
def test_bad_extension_params_are_refused_naming_the_key(tmp_path: Path, edit, message: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    bad = copy.deepcopy(raw)
    edit(bad)
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        load_params(write(tmp_path, bad))


def test_the_embedded_default_weaves_three_methods_over_two_axes_and_uses_ties_and_tsv_as_poolings() -> None:
    params = load_params(ROOT / "params.yaml")
    spaces = {m: dict(spec.space) for m, spec in params.method_params.items() if spec.space}
    assert set(spaces) == {"ties", "dare", "breadcrumbs"}
    assert set(params.weave.method_poolings) == {"ties", "tsv"}


def _with_extensions(run, gain_space, gain_ties):
    """Add to every record a `lam_x_density` variant (TIES only) and a `ties_pooling` variant (all methods) whose
    accuracies are the baseline plus the given per-(setup, method) gains."""
    for (_model, setup, method), record in run.weave.items():
        extensions = {}
        if method == "ties":
            extensions["lam_x_density"] = {"space": {"density": [0.1, 0.2]}, "pooling": "avg", "pooling_params": {},
                                           "accuracy": {t: min(100.0, a + gain_space(setup)) for t, a
                                                        in record["baseline"].items()}}
        extensions["ties_pooling"] = {"space": {}, "pooling": "ties", "pooling_params": {"density": 0.2},
                                      "accuracy": {t: min(100.0, max(0.0, a + gain_ties(setup, method)))
                                                   for t, a in record["baseline"].items()}}
        record["extensions"] = extensions
        record.pop("intervals", None)
    return run


def _load(tmp_path: Path, gain_space, gain_ties):
    run = _with_extensions(make_run(methods=("ties", "magmax", "iso_c"), seed=3), gain_space, gain_ties)
    root = run.write(tmp_path / "metrics")
    return load_metrics(root, models=run.models, setups=run.setups, methods=run.methods,
                        poolings=["avg", "random", "magmax"], pool_overs=["all", "augmented"])


def test_the_table_holds_each_setups_mean_and_the_gain_over_lam_only(tmp_path: Path) -> None:
    run = _load(tmp_path, lambda s: 2.0, lambda s, m: -1.0)
    table = beyond_lam_table(run)
    rows = {(row[0].key, row[1].key): row for row in table.rows}
    assert set(rows) == {("ties", "baseline"), ("ties", "lam_only"), ("ties", "lam_x_density"), ("ties", "ties_pooling"),
                         ("magmax", "baseline"), ("magmax", "lam_only"), ("magmax", "ties_pooling"),
                         ("iso_c", "baseline"), ("iso_c", "lam_only"), ("iso_c", "ties_pooling")}
    for setup_index, setup in enumerate(run.setups, start=2):
        record = run.get("tiny-clip", setup, "ties")
        baseline = sum(record.baseline.values()) / len(record.baseline)
        expected = sum(min(100.0, a + 2.0) for a in record.baseline.values()) / len(record.baseline)
        assert rows[("ties", "baseline")][setup_index] == pytest.approx(baseline)
        assert rows[("ties", "lam_x_density")][setup_index] == pytest.approx(expected)
    lam_only_avg = rows[("ties", "lam_only")][-2]
    assert rows[("ties", "lam_x_density")][-1] == pytest.approx(rows[("ties", "lam_x_density")][-2] - lam_only_avg)
    assert variant_label(run.get("tiny-clip", "mtl", "ties").extensions["lam_x_density"]) == "λ × density"
    assert variant_label(WeaveExtension(space={}, pooling="tsv", pooling_params={}, accuracy={})) == "TSV as pooling"


@pytest.mark.parametrize("gain_space, gain_ties, verdict", [
    (lambda s: 2.0, lambda s, m: 1.5, HOLDS),
    (lambda s: -2.0, lambda s, m: -1.5, FAILS),
    (lambda s: 2.0, lambda s, m: -1.5, MIXED),
    # TIES as pooling beats the baseline in 2 of 3 setups for every method: more than half of the cells
    (lambda s: 2.0, lambda s, m: -1.5 if s == "dg" else 1.5, HOLDS),
])
def test_the_claim_verdict_follows_the_majority_rule_per_part(tmp_path: Path, gain_space, gain_ties,
                                                              verdict: str) -> None:
    claim = claim_beyond_lam(_load(tmp_path, gain_space, gain_ties))
    assert claim.id == "beyond_lam" and claim.verdict == verdict
    assert claim.numbers["space"]["cells"] == 3 and claim.numbers["ties_pooling"]["cells"] == 9


def test_the_claims_numbers_are_means_over_cells(tmp_path: Path) -> None:
    run = _load(tmp_path, lambda s: {"mtl": 1.0, "cl": 2.0, "dg": 4.0}[s], lambda s, m: 0.5)
    claim = claim_beyond_lam(run)
    records = [run.get("tiny-clip", s, "ties") for s in run.setups]
    by_hand = sum(r.extension_avg("lam_x_density") - r.baseline_avg for r in records) / 3
    assert claim.numbers["space"]["mean_gain_pp"] == pytest.approx(by_hand)
    over = sum(r.extension_avg("lam_x_density") - r.weaving_avg("avg", "all") for r in records) / 3
    assert claim.numbers["space"]["mean_gain_over_lam_only_pp"] == pytest.approx(over)
    assert not math.isnan(claim.numbers["ties_pooling"]["mean_gain_pp"])


def test_no_variants_make_the_claim_untestable_and_no_table(tmp_path: Path) -> None:
    run = make_run(methods=("ties",), seed=1)
    root = run.write(tmp_path / "metrics")
    loaded = load_metrics(root, models=run.models, setups=run.setups, methods=run.methods,
                          poolings=["avg", "random", "magmax"], pool_overs=["all", "augmented"])
    assert beyond_lam_table(loaded) is None
    assert claim_beyond_lam(loaded).verdict == UNTESTABLE
