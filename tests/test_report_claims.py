"""The claims check on synthetic metrics built to make each claim hold, fail, or be mixed."""

from __future__ import annotations

import json
import math

import pytest
from report_fixtures import concentrated_best_lambda, make_run, spread_best_lambda

from weaving.report import load_metrics
from weaving.report.claims import (
    FAILS,
    HOLDS,
    MIXED,
    UNTESTABLE,
    best_lambda_spread,
    check_claims,
    claims_json,
    claims_markdown,
)

SETUPS = ("mtl", "cl", "dg")


def claims_of(tmp_path, setups=SETUPS, methods=("ties", "magmax", "iso_c"), poolings=("avg", "random", "magmax"),
              pool_overs=("all", "augmented"), **knobs):
    synthetic = make_run(setups=setups, methods=methods, **knobs)
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], setups, methods, poolings, pool_overs)
    return {c.id: c for c in check_claims(run)}


@pytest.mark.parametrize("gain, verdict", [
    (3.0, HOLDS),
    (-2.0, FAILS),
    (lambda model, setup, method: 2.0 if method in ("ties", "magmax") else -2.0, MIXED),  # 2 of 4 methods
])
def test_beats_baseline(tmp_path, gain, verdict):
    claims = claims_of(tmp_path, methods=("ties", "magmax", "iso_c", "pcb"), gain=gain)
    assert claims["beats_baseline"].verdict == verdict


def test_beats_baseline_reports_each_gain(tmp_path):
    claim = claims_of(tmp_path, gain=lambda model, setup, method: {"ties": 1.25, "magmax": -0.5, "iso_c": 4.0}[method])
    assert claim["beats_baseline"].verdict == HOLDS
    assert claim["beats_baseline"].numbers["gain_pp"] == pytest.approx({"ties": 1.25, "magmax": -0.5, "iso_c": 4.0},
                                                                       abs=0.011)
    assert "2/3 methods gain" in claim["beats_baseline"].evidence


@pytest.mark.parametrize("by_setup, verdict", [
    ({"mtl": 0.5, "cl": 5.0, "dg": 4.0}, HOLDS),
    ({"mtl": 5.0, "cl": 1.0, "dg": 1.0}, FAILS),
    ({"mtl": 2.0, "cl": 5.0, "dg": 1.0}, MIXED),
])
def test_gains_by_setup(tmp_path, by_setup, verdict):
    claims = claims_of(tmp_path, gain=lambda model, setup, method: by_setup[setup])
    assert claims["gains_by_setup"].verdict == verdict
    assert claims["gains_by_setup"].numbers["gain_pp"] == pytest.approx(by_setup, abs=0.011)


def test_gains_by_setup_needs_mtl_and_another_setup(tmp_path):
    claim = claims_of(tmp_path, setups=("cl", "dg"))["gains_by_setup"]
    assert claim.verdict == UNTESTABLE and "not testable: setup(s) mtl not run" in claim.evidence


@pytest.mark.parametrize("random_offset, magmax_offset, verdict", [
    (0.2, -10.0, HOLDS),
    (-3.0, 1.0, FAILS),
    (-3.0, -10.0, MIXED),
    (0.9, -2.5, HOLDS),  # just inside both thresholds
    (1.2, -1.5, FAILS),  # just outside both
])
def test_poolings(tmp_path, random_offset, magmax_offset, verdict):
    claims = claims_of(tmp_path, random_offset=random_offset, magmax_offset=magmax_offset)
    assert claims["poolings"].verdict == verdict


def test_poolings_untestable_without_them(tmp_path):
    claim = claims_of(tmp_path, poolings=("avg",))["poolings"]
    assert claim.verdict == UNTESTABLE
    assert "pooling 'random' not run" in claim.evidence and "pooling 'magmax' not run" in claim.evidence
    claim = claims_of(tmp_path, poolings=("avg", "magmax"))["poolings"]
    assert claim.verdict == HOLDS  # part (b) alone decides


def _spread_cl_dg_concentrated_iso_c(model, setup, method, i, lambdas):
    if setup == "mtl" and method == "iso_c":
        return concentrated_best_lambda(model, setup, method, i, lambdas)
    return spread_best_lambda(model, setup, method, i, lambdas)


def _concentrated_cl_dg_spread_iso_c(model, setup, method, i, lambdas):
    if setup in ("cl", "dg"):
        return concentrated_best_lambda(model, setup, method, i, lambdas)
    return spread_best_lambda(model, setup, method, i, lambdas)


def _spread_everywhere(model, setup, method, i, lambdas):
    return spread_best_lambda(model, setup, method, i, lambdas)


@pytest.mark.parametrize("best_lambda, verdict", [
    (_spread_cl_dg_concentrated_iso_c, HOLDS),
    (_concentrated_cl_dg_spread_iso_c, FAILS),
    (_spread_everywhere, MIXED),
])
def test_best_lambda_spread(tmp_path, best_lambda, verdict):
    claim = claims_of(tmp_path, best_lambda=best_lambda)["best_lambda_spread"]
    assert claim.verdict == verdict


def test_best_lambda_spread_untestable_parts(tmp_path):
    claim = claims_of(tmp_path, setups=("mtl",), methods=("ties", "magmax"))["best_lambda_spread"]
    assert claim.verdict == UNTESTABLE
    assert "(a) not testable" in claim.evidence and "(b) not testable: iso_c not run" in claim.evidence


def test_spread_measure_against_a_hand_computation(tmp_path):
    best = [0.1, 0.1, 0.2, 0.3]  # 4 tasks, 3 distinct best lams
    synthetic = make_run(setups=("cl",), methods=("ties",), best_lambda=lambda mo, s, me, i, lambdas: best[i])
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], ["cl"], ["ties"])
    record = run.get("tiny-clip", "cl", "ties")
    assert list(record.best_lambda_per_task().values()) == pytest.approx(best)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(4)  # min(4 tasks, 10 lams) = 4
    spread = best_lambda_spread(record)
    assert spread["entropy"] == pytest.approx(entropy)
    # IQR by linear interpolation over [0.1, 0.1, 0.2, 0.3]: q1 = 0.1, q3 = 0.225; range of lams 0.9
    assert spread["iqr"] == pytest.approx(0.125 / 0.9)


@pytest.mark.parametrize("augmented_offset, verdict", [(-1.0, HOLDS), (1.0, FAILS)])
def test_pool_over(tmp_path, augmented_offset, verdict):
    assert claims_of(tmp_path, augmented_offset=augmented_offset)["pool_over"].verdict == verdict


def test_pool_over_untestable_without_augmented(tmp_path):
    assert claims_of(tmp_path, pool_overs=("all",))["pool_over"].verdict == UNTESTABLE


def test_markdown_and_json_state_rule_numbers_and_verdict(tmp_path):
    claims = list(claims_of(tmp_path, gain=-2.0).values())
    markdown = claims_markdown(claims)
    data = json.loads(claims_json(claims))
    assert [c["id"] for c in data["claims"]] == [c.id for c in claims]
    for claim, entry in zip(claims, data["claims"]):
        assert f"- Rule: {claim.rule}" in markdown
        assert f"- Verdict: **{claim.verdict}**" in markdown
        assert entry["verdict"] == claim.verdict and entry["rule"] == claim.rule
    assert data["claims"][0]["verdict"] == FAILS
    assert "±1.0" in markdown and "≥ 2.0" in markdown  # thresholds are stated
