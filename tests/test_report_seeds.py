"""The report over replicate seeds: means, sample standard deviations and t-intervals checked
against numbers computed by hand; the gain rule over seeds; seeds_holding; one seed = the old report."""

from __future__ import annotations

import csv
import io
import json
import math
from statistics import fmean

import pytest
from report_fixtures import make_run

from weaving.report import build_report, load_metrics
from weaving.report.claims import (
    FAILS,
    HOLDS,
    MIXED,
    UNTESTABLE,
    Claim,
    check_claims,
    check_seed_claims,
    section_claims,
)
from weaving.report.load import MetricsError
from weaving.report.seeds import counts_as_gain, mean_run, seed_stats, seeds_table, t_quantile
from weaving.report.summary import seeds_summary, summary

SETUPS = ("mtl", "cl", "dg")
METHODS = ("ties", "magmax", "iso_c", "pcb")
T_975_2 = 4.302652729911275  # t_{0.975, 2}: three seeds


def by_hand(values):
    """Mean, sample std (n - 1) and 95% t-interval of three values, written out."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = T_975_2 * s / math.sqrt(n)
    return m, s, m - half, m + half


def seed_runs(tmp_path, gains, methods=METHODS, setups=SETUPS):
    """{seed: RunMetrics} for seeds 0, 1, 2; `gains[seed]` the gain knob of make_run (points, per task)."""
    synthetic, runs = {}, {}
    for seed, gain in gains.items():
        synthetic[seed] = make_run(setups=setups, methods=methods, seed=seed, gain=gain)
        runs[seed] = load_metrics(synthetic[seed].write(tmp_path / f"seed{seed}"), ["tiny-clip"], setups, methods)
    return synthetic, runs


def test_t_quantiles_are_the_known_values():
    assert t_quantile(1) == pytest.approx(12.706204736174698, abs=1e-9)
    assert t_quantile(2) == pytest.approx(T_975_2, abs=1e-9)  # closed form for 2 df: 0.95 * sqrt(2 / 0.0975)
    assert t_quantile(10) == pytest.approx(2.2281388519649385, abs=1e-9)
    assert t_quantile(30) == pytest.approx(2.0422724563012373, abs=1e-9)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_seed_stats_by_hand():
    stats = seed_stats([1.0, 2.0, 4.5])
    # mean 2.5; deviations -1.5, -0.5, 2.0; std = sqrt((2.25 + 0.25 + 4) / 2) = sqrt(3.25)
    assert stats.mean == pytest.approx(2.5)
    assert stats.std == pytest.approx(math.sqrt(3.25))
    half = T_975_2 * math.sqrt(3.25) / math.sqrt(3)
    assert stats.ci == pytest.approx([2.5 - half, 2.5 + half])
    one = seed_stats([7.0])
    assert (one.mean, one.std, one.low, one.high, one.ci) == (7.0, None, None, None, None)


def test_gain_rule_needs_the_interval_to_exclude_zero():
    assert fmean([3.0, 2.0, -1.0]) > 0 and not counts_as_gain([3.0, 2.0, -1.0])  # interval straddles 0
    assert counts_as_gain([2.0, 2.5, 3.0])
    assert not counts_as_gain([-2.0, -2.5, -3.0])
    assert counts_as_gain([0.01]) and not counts_as_gain([0.004])  # one seed: the point estimate, 2 decimals


def test_mean_run_averages_every_accuracy(tmp_path):
    synthetic, runs = seed_runs(tmp_path, {0: 1.0, 1: 2.0, 2: 4.5})
    mean = mean_run(runs)
    key = ("tiny-clip", "cl", "ties")
    task = synthetic[0].weave[key]["tasks"][1]
    records = [synthetic[s].weave[key] for s in (0, 1, 2)]
    assert mean.weave[key].baseline[task] == pytest.approx(sum(r["baseline"][task] for r in records) / 3)
    assert mean.weave[key].sweep[task][2] == pytest.approx(sum(r["sweep"][task][2] for r in records) / 3)
    assert mean.weave[key].weaving["magmax"]["augmented"][task] == pytest.approx(
        sum(r["weaving"]["magmax"]["augmented"][task] for r in records) / 3)
    assert mean.weave[key].intervals is None
    refs = [synthetic[s].reference["tiny-clip"] for s in (0, 1, 2)]
    assert mean.reference["tiny-clip"].zeroshot["mnist"] == pytest.approx(sum(r["zeroshot"]["mnist"] for r in refs) / 3)
    assert mean.reference["tiny-clip"].cl["mnist-s2"].sequential_final == pytest.approx(
        sum(r["cl"]["mnist-s2"]["sequential_final"] for r in refs) / 3)
    sims = [synthetic[s].similarity["tiny-clip"]["individual"]["matrix"][0][1] for s in (0, 1, 2)]
    assert mean.similarity["tiny-clip"].individual.matrix[0][1] == pytest.approx(sum(sims) / 3)
    assert mean_run({5: runs[0]}) is runs[0]


def test_runs_that_differ_are_refused_by_name(tmp_path):
    _, runs = seed_runs(tmp_path, {0: 1.0, 1: 2.0})
    other = load_metrics(make_run(setups=SETUPS, methods=("ties", "magmax"), seed=2).write(tmp_path / "other"),
                         ["tiny-clip"], SETUPS, ("ties", "magmax"))
    with pytest.raises(MetricsError, match=r"seed 7 vs seed 0: methods \['ties', 'magmax'\]"):
        mean_run({**runs, 7: other})


def test_summary_over_seeds_by_hand(tmp_path):
    gains = {0: 1.0, 1: 2.0, 2: 4.5}
    synthetic, runs = seed_runs(tmp_path, gains)
    # bootstrap intervals in one seed's file: per seed over test images, left out of the aggregate
    record = synthetic[1].weave[("tiny-clip", "mtl", "ties")]
    bounds = {"estimate": 50.0, "low": 49.0, "high": 51.0}
    pairs = {p: {o: bounds for o in ("all", "augmented")} for p in ("avg", "random", "magmax")}
    record["intervals"] = {"resamples": 100, "level": 0.95, "seed": 0, "baseline": bounds, "weaving": pairs,
                           "gain": pairs}
    runs[1] = load_metrics(synthetic[1].write(tmp_path / "seed1b"), ["tiny-clip"], SETUPS, METHODS)
    assert "gain_ci" in summary(runs[1])["tiny-clip"]["mtl"]["ties"]
    result = json.loads(json.dumps(seeds_summary(runs)))
    assert result["seeds"] == [0, 1, 2]
    entry = result["tiny-clip"]["mtl"]["ties"]
    m, s, low, high = by_hand([gains[0], gains[1], gains[2]])
    assert entry["gain"] == pytest.approx(m, abs=0.006)
    assert entry["gain_std"] == pytest.approx(s, abs=0.006)
    assert entry["gain_seeds_ci"] == pytest.approx([low, high], abs=0.006)
    baselines = [fmean(synthetic[k].weave[("tiny-clip", "mtl", "ties")]["baseline"].values()) for k in (0, 1, 2)]
    m, s, low, high = by_hand(baselines)
    assert entry["baseline"] == pytest.approx(m, abs=0.006) and entry["baseline_std"] == pytest.approx(s, abs=0.006)
    assert entry["baseline_seeds_ci"] == pytest.approx([low, high], abs=0.006)
    assert {"oracle_single_lam_std", "oracle_single_lam_seeds_ci"} <= set(entry)
    assert not [k for k in entry if k.endswith("_ci") and not k.endswith("_seeds_ci")]
    zeroshot = [fmean(synthetic[k].reference["tiny-clip"]["zeroshot"].values()) for k in (0, 1, 2)]
    assert result["tiny-clip"]["zeroshot_avg"] == pytest.approx(fmean(zeroshot), abs=0.006)
    assert result["tiny-clip"]["zeroshot_avg_std"] == pytest.approx(by_hand(zeroshot)[1], abs=0.006)
    # the top average over setups and models: per seed the mean of its setups, then over seeds
    m, s, low, high = by_hand([gains[0], gains[1], gains[2]])
    assert result["avg"]["ties"]["gain"] == pytest.approx(m, abs=0.006)
    assert result["avg"]["ties"]["gain_std"] == pytest.approx(s, abs=0.006)


def test_claim_holding_in_two_of_three_seeds(tmp_path):
    """beats_baseline holds alone in seeds 0 and 1 (every method gains) but not in seed 2 (two of four
    methods lose); on the means, ties and magmax gain with intervals above 0, iso_c and pcb have a
    positive mean whose interval straddles 0: 2 of 4 methods count -> mixed."""
    def gain(seed):
        return lambda model, setup, method: {0: 3.0, 1: 2.0, 2: -1.0}[seed] if method in ("iso_c", "pcb") \
            else {0: 2.0, 1: 2.5, 2: 3.0}[seed]

    _, runs = seed_runs(tmp_path, {s: gain(s) for s in (0, 1, 2)})
    alone = [{c.id: c.verdict for c in check_claims(runs[s])}["beats_baseline"] for s in (0, 1, 2)]
    assert alone == [HOLDS, HOLDS, MIXED]
    claim = {c.id: c for c in check_seed_claims(runs)}["beats_baseline"]
    assert claim.seeds == [0, 1, 2] and claim.seeds_holding == 2
    assert claim.verdict == MIXED
    assert claim.numbers["methods_gaining"] == 2
    assert claim.numbers["gain_pp"]["pcb"] == pytest.approx(4 / 3, abs=0.01)  # > 0 but not counted
    spread = claim.numbers["gain_pp_over_seeds"]["pcb"]
    assert spread["std"] == pytest.approx(by_hand([3.0, 2.0, -1.0])[1], abs=0.01)
    assert spread["ci"][0] < 0 < spread["ci"][1]
    assert "interval" in claim.rule and "excludes zero" in claim.rule
    assert claim.seeds_note() == "holds in 2 of 3 seeds"


def test_positive_mean_gain_without_interval_is_no_gain(tmp_path):
    """Every method: gains 3, 2, -1 over the seeds; the mean (+1.33) would count with one seed's rule, not here."""
    _, runs = seed_runs(tmp_path, {0: 3.0, 1: 2.0, 2: -1.0}, methods=("ties", "magmax", "iso_c"))
    claims = {c.id: c for c in check_seed_claims(runs)}
    assert claims["beats_baseline"].verdict == FAILS and claims["beats_baseline"].seeds_holding == 2
    assert all(g == pytest.approx(4 / 3, abs=0.01) for g in claims["beats_baseline"].numbers["gain_pp"].values())
    assert check_claims(mean_run(runs))[0].verdict == HOLDS  # the same means judged by the point estimate
    assert claims["gains_by_setup"].seeds == [0, 1, 2]


def test_one_seed_is_the_single_run_report(tmp_path):
    _, runs = seed_runs(tmp_path, {4: 2.0}, methods=("ties", "magmax"))
    run = runs[4]
    assert seeds_summary(runs) == {**summary(run), "seeds": [4]}
    for claim, plain in zip(check_seed_claims(runs), check_claims(run), strict=True):
        assert claim.seeds == [4]
        assert claim.seeds_holding == (None if plain.verdict == UNTESTABLE else int(plain.verdict == HOLDS))
        claim.seeds, claim.seeds_holding = [], None
        assert claim == plain


def test_section_claims_count_the_first_seed_only():
    claims = [Claim("a", "1", "s", "r", HOLDS, "e"), Claim("b", "1", "s", "r", FAILS, "e"),
              Claim("c", "1", "s", "r", UNTESTABLE, "e")]
    section_claims(claims, [3, 4, 5])
    assert [(c.seeds, c.seeds_holding) for c in claims] == [([3], 1), ([3], 0), ([3], None)]


def test_seeds_table_by_hand(tmp_path):
    gains = {0: 1.0, 1: 2.0, 2: 4.5}
    synthetic, runs = seed_runs(tmp_path, gains, methods=("ties", "magmax"))
    table = seeds_table(runs)
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert list(rows[0]) == ["method", "setup", "seeds", *[f"{k}_{p}" for k in ("baseline", "weaving", "gain")
                                                           for p in ("mean", "std", "ci_low", "ci_high")]]
    row = next(r for r in rows if r["method"] == "magmax" and r["setup"] == "avg")
    m, s, low, high = by_hand([gains[0], gains[1], gains[2]])
    assert [float(row[f"gain_{p}"]) for p in ("mean", "std", "ci_low", "ci_high")] == pytest.approx(
        [m, s, low, high], abs=0.006)
    assert row["seeds"] == "3"
    base = [fmean(fmean(synthetic[k].weave[("tiny-clip", st, "magmax")]["baseline"].values()) for st in SETUPS)
            for k in (0, 1, 2)]
    assert float(row["baseline_mean"]) == pytest.approx(fmean(base), abs=0.006)
    assert f"{m:.2f} ± {s:.2f} [{low:.2f}, {high:.2f}]" in table.to_markdown()


def test_build_report_over_three_seeds(tmp_path):
    def gain(seed):
        return lambda model, setup, method: {0: 3.0, 1: 2.0, 2: -1.0}[seed] if method == "iso_c" \
            else {0: 2.0, 1: 2.5, 2: 3.0}[seed]

    _, runs = seed_runs(tmp_path, {s: gain(s) for s in (0, 1, 2)}, methods=("ties", "magmax", "iso_c"))
    files = build_report(runs, "embedded")
    assert {"tables/seeds.md", "tables/seeds.csv"} <= set(files)
    claims = json.loads(files["claims.json"])["claims"]
    assert all(c["seeds"] == [0, 1, 2] for c in claims)
    beats = next(c for c in claims if c["id"] == "beats_baseline")
    assert (beats["verdict"], beats["seeds_holding"]) == (HOLDS, 3)  # 2 of 3 methods count; every seed alone holds
    assert "holds in 3 of 3 seeds" in files["claims.md"].decode()
    summary_json = json.loads(files["summary.json"])
    assert summary_json["seeds"] == [0, 1, 2] and "gain_std" in summary_json["avg"]["ties"]
    page = files["index.html"].decode()
    assert "Seeds: 0, 1, 2 (means over seeds; ± one standard deviation; 95% t-intervals" in page
    assert "error bars: ± one standard deviation over seeds" in page
    assert "mean over seeds 0, 1, 2" in files["tables/table2_data_free.md"].decode()
    assert "the mean over seeds 0, 1, 2" in files["paper_comparison.md"].decode()
    single = build_report({0: mean_run(runs)}, "embedded")
    assert files["figures/figure1_baseline_vs_weaving.png"] != single["figures/figure1_baseline_vs_weaving.png"]
    assert files["figures/figure2_best_lambda_tiny-clip.png"] == single["figures/figure2_best_lambda_tiny-clip.png"]
    with pytest.raises(TypeError):
        build_report(runs[0], "embedded")


def test_plot_data_over_seeds(tmp_path):
    synthetic, runs = seed_runs(tmp_path, {0: 1.0, 1: 2.0, 2: 4.5}, methods=("ties",), setups=("mtl",))
    from weaving.report.plot_data import all_plot_data

    files = all_plot_data(mean_run(runs), runs)
    rows = list(csv.DictReader(io.StringIO(files["baseline_vs_weaving.csv"])))
    row = next(r for r in rows if r["setup"] == "mtl" and r["variant"] == "weaving")
    woven = [fmean(synthetic[k].weave[("tiny-clip", "mtl", "ties")]["weaving"]["avg"]["all"].values()) for k in (0, 1, 2)]
    assert float(row["accuracy"]) == pytest.approx(fmean(woven), abs=1e-4)
    assert float(row["accuracy_std"]) == pytest.approx(by_hand(woven)[1], abs=1e-4)
    by_seed = list(csv.DictReader(io.StringIO(files["baseline_vs_weaving_by_seed.csv"])))
    assert sorted({r["seed"] for r in by_seed}) == ["0", "1", "2"]
    assert "accuracy_std" in files["accuracy_vs_lambda.csv"].splitlines()[0]
    assert "accuracy_std" not in all_plot_data(runs[0])["accuracy_vs_lambda.csv"]


def test_float_noise_around_zero_is_no_gain():
    assert not counts_as_gain([1e-15, 2e-15, 1.5e-15])  # an exact 0 up to rounding, zero spread
    assert not counts_as_gain([0.004, 0.004, 0.004])
    assert counts_as_gain([0.01, 0.01, 0.01])
