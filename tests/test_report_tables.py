"""Every table's numbers, recomputed here from the synthetic records with plain Python."""

from __future__ import annotations

import csv
import io
import json
from statistics import mean

import pytest
from report_fixtures import make_run

from weaving.report import load_metrics
from weaving.report.summary import summary
from weaving.report.tables import oracle_table, per_dataset_tables, table1, table2, table3

MODELS = ["ViT-B-32", "tiny-clip"]
SETUPS = ["mtl", "cl", "dg"]
METHODS = ["ties", "magmax", "iso_c"]
POOLINGS = ["avg", "random", "magmax"]
POOL_OVERS = ["all", "augmented"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    synthetic = make_run(models=MODELS, methods=METHODS, seed=3,
                         gain=lambda model, setup, method: {"mtl": -1.5, "cl": 4.0, "dg": 2.0}[setup])
    root = synthetic.write(tmp_path_factory.mktemp("metrics"))
    return synthetic, load_metrics(root, MODELS, SETUPS, METHODS)


def rows_of(table):
    return list(csv.DictReader(io.StringIO(table.to_csv())))


def avg_of(record, per_task):
    return mean(per_task[t] for t in record["tasks"])


def test_table1_recommended_averages(runs):
    synthetic, run = runs
    rows = rows_of(table1(run))
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        cells = []
        for setup in SETUPS:
            for model in MODELS:
                record = synthetic.weave[(model, setup, row["method"])]
                expected = avg_of(record, record["recommended"])
                assert float(row[f"{setup}/{model}"]) == pytest.approx(expected, abs=0.0051)
                cells.append(expected)
        assert float(row["avg"]) == pytest.approx(mean(cells), abs=0.0051)
    assert {r["method"]: r["lam"] for r in rows} == {"ties": "1", "magmax": "0.5", "iso_c": "1"}


def test_table2_baseline_vs_weaving_and_bold(runs):
    synthetic, run = runs
    table = table2(run)
    rows = rows_of(table)
    assert [(r["method"], r["variant"]) for r in rows] == [(m, v) for m in METHODS for v in ("baseline", "weaving")]
    for i in range(0, len(rows), 2):
        base, woven = rows[i], rows[i + 1]
        method = base["method"]
        b_cells, w_cells = [], []
        for setup in SETUPS:
            for model in MODELS:
                record = synthetic.weave[(model, setup, method)]
                b = avg_of(record, record["baseline"])
                w = avg_of(record, record["weaving"]["avg"]["all"])
                key = f"{setup}/{model}"
                assert float(base[key]) == pytest.approx(b, abs=0.0051)
                assert float(woven[key]) == pytest.approx(w, abs=0.0051)
                b_cells.append(b)
                w_cells.append(w)
                j = table.keys.index(key)
                winner = i if round(b, 2) > round(w, 2) else i + 1
                assert (winner, j) in table.bold
        assert float(woven["gain"]) == pytest.approx(mean(w_cells) - mean(b_cells), abs=0.0051)
        assert base["gain"] == ""
    markdown = table.to_markdown()
    assert "| TIES | + Weight Weaving |" in markdown and "**" in markdown


def test_table3_per_pooling(runs):
    synthetic, run = runs
    rows = rows_of(table3(run))
    for row in rows:
        for pooling in POOLINGS:
            for pool_over in POOL_OVERS:
                values = [avg_of(r, r["weaving"][pooling][pool_over]) for (mo, s, me), r in synthetic.weave.items()
                          if me == row["method"]]
                assert len(values) == len(MODELS) * len(SETUPS)
                assert float(row[f"{pooling}/{pool_over}"]) == pytest.approx(mean(values), abs=0.0051)


def test_per_dataset_tables(runs):
    synthetic, run = runs
    tables = {t.name: t for t in per_dataset_tables(run)}
    assert sorted(tables) == sorted(f"per_dataset_{s}_{m}" for s in SETUPS for m in MODELS)
    for setup in SETUPS:
        for model in MODELS:
            rows = rows_of(tables[f"per_dataset_{setup}_{model}"])
            reference = synthetic.reference[model]
            zeroshot, finetuned = rows[0], rows[1]
            assert (zeroshot["variant"], finetuned["variant"]) == ("zeroshot", "finetuned")
            tasks = synthetic.weave[(model, setup, "ties")]["tasks"]
            for task in tasks:
                if setup == "cl":
                    expected = (reference["cl"][task]["zeroshot"], reference["cl"][task]["sequential_final"])
                else:
                    expected = (reference["zeroshot"][task], reference["finetuned"][task])
                assert (float(zeroshot[task]), float(finetuned[task])) == pytest.approx(expected, abs=0.0051)
            by_key = {(r["method"], r["variant"]): r for r in rows[2:]}
            # TIES and ISO-C are recommended at lam = 1 = baseline: no separate row; MagMax at 0.5: a row.
            assert ("ties", "recommended") not in by_key and ("magmax", "recommended") in by_key
            for method in METHODS:
                record = synthetic.weave[(model, setup, method)]
                variants = {"baseline": record["baseline"], "weaving": record["weaving"]["avg"]["all"]}
                if method == "magmax":
                    variants["recommended"] = record["recommended"]
                for variant, per_task in variants.items():
                    row = by_key[(method, variant)]
                    for task in tasks:
                        assert float(row[task]) == pytest.approx(per_task[task], abs=0.0051)
                    assert float(row["avg"]) == pytest.approx(avg_of(record, per_task), abs=0.0051)


def test_per_dataset_reference_gap_is_left_empty(tmp_path):
    synthetic = make_run(methods=["ties"])
    del synthetic.reference["tiny-clip"]["finetuned"]["ising"]
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], ["mtl"], ["ties"])
    rows = rows_of(per_dataset_tables(run)[0])
    assert rows[1]["ising"] == "" and rows[1]["avg"] == ""
    assert "| reference | fine-tuned on the task | — |" in per_dataset_tables(run)[0].to_markdown()


def test_oracle_table(runs):
    synthetic, run = runs
    rows = rows_of(oracle_table(run))
    assert len(rows) == len(MODELS) * len(SETUPS) * len(METHODS)
    for row in rows:
        record = synthetic.weave[(row["model"], row["setup"], row["method"])]
        tasks, lambdas = record["tasks"], record["lambdas"]
        per_lambda = [mean(record["sweep"][t][i] for t in tasks) for i in range(len(lambdas))]
        best_index = max(range(len(lambdas)), key=lambda i: (round(per_lambda[i], 9), -i))  # first of ties
        per_task = mean(max(record["sweep"][t]) for t in tasks)
        woven = avg_of(record, record["weaving"]["avg"]["all"])
        assert float(row["oracle_single"]) == pytest.approx(per_lambda[best_index], abs=0.0051)
        assert float(row["oracle_single_lam"]) == pytest.approx(lambdas[best_index])
        assert float(row["oracle_per_task"]) == pytest.approx(per_task, abs=0.0051)
        assert float(row["gap_single"]) == pytest.approx(woven - per_lambda[best_index], abs=0.01)
        assert float(row["gap_per_task"]) == pytest.approx(woven - per_task, abs=0.01)
        assert float(row["oracle_per_task"]) >= float(row["oracle_single"])


def test_summary_numbers_and_keys(runs):
    synthetic, run = runs
    result = json.loads(json.dumps(summary(run)))
    assert sorted(result) == sorted([*MODELS, "avg"])
    entry_keys = {"baseline", "recommended", "gain", "oracle_single", "oracle_single_lam", "oracle_per_task",
                  *[f"weaving_{p}_{o}" for p in POOLINGS for o in POOL_OVERS]}
    for model in MODELS:
        assert sorted(result[model]) == sorted([*SETUPS, "avg", "zeroshot_avg", "finetuned_avg"])
        assert result[model]["zeroshot_avg"] == pytest.approx(mean(synthetic.reference[model]["zeroshot"].values()),
                                                              abs=0.0051)
        for setup in SETUPS:
            for method in METHODS:
                entry = result[model][setup][method]
                record = synthetic.weave[(model, setup, method)]
                assert set(entry) == entry_keys
                assert entry["weaving_random_augmented"] == pytest.approx(
                    avg_of(record, record["weaving"]["random"]["augmented"]), abs=0.0051)
                assert all(v == round(v, 2) for v in entry.values())
    for method in METHODS:
        gains = [avg_of(r, r["weaving"]["avg"]["all"]) - avg_of(r, r["baseline"])
                 for (mo, s, me), r in synthetic.weave.items() if me == method]
        assert result["avg"][method]["gain"] == pytest.approx(mean(gains), abs=0.01)


def test_intervals_table_and_summary_show_the_weave_stages_intervals(tmp_path):
    """Rows only for files that hold intervals; the verdict calls a gain a gain only when its whole interval
    is above 0; summary.json carries [low, high] beside each number and does not average them."""
    from weaving.report.tables import intervals_table

    def bounds(estimate, low, high):
        return {"estimate": estimate, "low": low, "high": high}

    synthetic = make_run(models=["tiny-clip"], methods=["ties", "magmax"], seed=1)
    plain = load_metrics(synthetic.write(tmp_path / "plain"), ["tiny-clip"], SETUPS, ["ties", "magmax"])
    assert intervals_table(plain) is None
    gains = {"mtl": (2.0, 0.5, 3.5), "cl": (-1.0, -2.0, -0.1), "dg": (0.4, -0.3, 1.1)}
    for setup, (gain, low, high) in gains.items():
        record = synthetic.weave[("tiny-clip", setup, "ties")]
        base = mean(record["baseline"].values())
        woven = mean(record["weaving"]["avg"]["all"].values())
        per_pair = {p: {o: bounds(woven, woven - 2, woven + 2) for o in POOL_OVERS} for p in POOLINGS}
        gain_pair = {p: {o: bounds(gain, low, high) for o in POOL_OVERS} for p in POOLINGS}
        record["intervals"] = {"resamples": 1000, "level": 0.95, "seed": 0, "baseline": bounds(base, base - 2, base + 2),
                               "weaving": per_pair, "gain": gain_pair}
    run = load_metrics(synthetic.write(tmp_path / "with"), ["tiny-clip"], SETUPS, ["ties", "magmax"])
    table = intervals_table(run)
    rows = rows_of(table)
    assert [(r["setup"], r["method"], r["verdict"]) for r in rows] == [
        ("mtl", "ties", "gain"), ("cl", "ties", "loss"), ("dg", "ties", "within_noise")]
    assert rows[0]["gain_interval"] == "[0.50, 3.50]" and float(rows[0]["gain"]) == pytest.approx(2.0)
    numbers = summary(run)["tiny-clip"]
    assert numbers["mtl"]["ties"]["gain_ci"] == [0.5, 3.5]
    assert "gain_ci" not in numbers["mtl"]["magmax"] and "gain_ci" not in numbers["avg"]["ties"]
