"""The `report` stage end to end on synthetic metrics: every output, atomicity, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import make_run
from stage_loader import load_stage

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["tiny-clip", "ViT-B-32"]
METHODS = ["magmax", "iso_c"]


report_stage = load_stage("report")
vega_stage = load_stage("vega_template")


def argv(metrics: Path, out: Path, models=MODELS, setups=("mtl", "cl", "dg"), methods=METHODS,
         profile="embedded") -> list[str]:
    return ["--metrics", str(metrics), "--out", str(out), "--models", *models, "--setups", *setups,
            "--methods", *methods, "--profile", profile]


def expected_files(models, setups=("mtl", "cl", "dg"), methods=METHODS) -> set[str]:
    files = {"summary.json", "claims.md", "claims.json", "paper_comparison.md", "index.html",
             "figures/figure1_baseline_vs_weaving.png"}
    for stem in ("table1_recommended", "table2_data_free", "table3_pooling", "oracle",
                 *[f"per_dataset_{s}_{m}" for s in setups for m in models]):
        files |= {f"tables/{stem}.md", f"tables/{stem}.csv"}
    for model in models:
        files |= {f"figures/{kind}_{model}.png" for kind in ("figure2_best_lambda", "figure3_similarity",
                                                              "accuracy_vs_lambda")}
    files |= {f"plots/{name}.csv" for name in ("accuracy_vs_lambda", "weaving_by_pooling", "baseline_vs_weaving",
                                               "best_lambda", "similarity")}
    files |= {f"plots/dvc/accuracy_vs_lambda/{m}__{s}__{me}.csv" for m in models for s in setups for me in methods}
    files |= {f"plots/dvc/baseline_vs_weaving/{m}__{s}.csv" for m in models for s in (*setups, "avg")}
    return files


def listing(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    return make_run(models=MODELS, methods=METHODS).write(tmp_path_factory.mktemp("metrics"))


@pytest.fixture(scope="module")
def reports(metrics, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "reports"
    assert report_stage.main(argv(metrics, out)) == 0
    return out


def test_stage_writes_every_output(reports):
    assert listing(reports) == expected_files(MODELS)
    summary = json.loads((reports / "summary.json").read_text())
    assert set(summary) == {*MODELS, "avg", "seeds"}
    claims = json.loads((reports / "claims.json").read_text())["claims"]
    paper_claims = ["beats_baseline", "gains_by_setup", "poolings", "best_lambda_spread", "pool_over"]
    assert [c["id"] for c in claims][:len(paper_claims)] == paper_claims  # then the families' sections' claims
    assert "**Not comparable**" in (reports / "paper_comparison.md").read_text()


def test_index_html_is_self_contained(reports):
    page = (reports / "index.html").read_text()
    assert page.count("src=\"data:image/png;base64,") == len([f for f in expected_files(MODELS)
                                                               if f.startswith("figures/")])
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for anchor in ("table1_recommended", "table2_data_free", "table3_pooling", "oracle"):
        assert f'id="{anchor}"' in page


def test_rerun_is_byte_identical_and_removes_stale_files(tmp_path):
    small = {"models": ["tiny-clip"], "setups": ("mtl",), "methods": ["ties"]}
    metrics = make_run(**small).write(tmp_path / "metrics")
    first, second = tmp_path / "first", tmp_path / "second"
    assert report_stage.main(argv(metrics, first, **small)) == 0
    (second / "tables").mkdir(parents=True)
    (second / "tables" / "stale.md").write_text("old")
    (second / "keep.txt").write_text("not the report's")
    assert report_stage.main(argv(metrics, second, **small)) == 0
    expected = expected_files(**small)
    assert listing(first) == expected
    assert listing(second) == expected | {"keep.txt"}
    for name in expected:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert not [p for p in second.iterdir() if p.name.startswith(".report-")]


def test_missing_file_fails_before_writing(metrics, tmp_path, capsys):
    broken = make_run(models=MODELS, methods=METHODS).write(tmp_path / "metrics")
    (broken / "ViT-B-32" / "weave" / "iso_c" / "dg.json").unlink()
    out = tmp_path / "reports"
    assert report_stage.main(argv(broken, out)) == 1
    err = capsys.readouterr().err
    assert "error: report:" in err and "ViT-B-32/weave/iso_c/dg.json: file is missing" in err
    assert not out.exists()


def test_partial_file_fails_and_leaves_previous_outputs(reports, tmp_path, capsys):
    synthetic = make_run(models=MODELS, methods=METHODS)
    del synthetic.weave[("tiny-clip", "cl", "magmax")]["sweep"]["mnist-s5"]
    broken = synthetic.write(tmp_path / "metrics")
    before = {name: (reports / name).read_bytes() for name in listing(reports)}
    assert report_stage.main(argv(broken, reports)) == 1
    assert "'sweep' lacks task(s) ['mnist-s5']" in capsys.readouterr().err
    assert {name: (reports / name).read_bytes() for name in listing(reports)} == before


def test_command_line_exit_code_and_message(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "report.py"), *argv(tmp_path, tmp_path / "out"),
                             "--poolings", "avg", "bogus"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "unknown poolings ['bogus']; valid: avg, magmax, random" in result.stderr


def fake_node_modules(root: Path, body: str = "window.x = 1;") -> Path:
    for package, relative in vega_stage.LIBRARIES:
        path = root / package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* {package} */ {body}")
        (root / package / "package.json").write_text(json.dumps({"version": "9.9.9"}))
    return root


def test_vega_template_inlines_the_libraries(tmp_path):
    modules = fake_node_modules(tmp_path / "node_modules", body='var s = "</script>";')
    out = tmp_path / "reports" / "vega_template.html"
    assert vega_stage.main(["--node-modules", str(modules), "--out", str(out)]) == 0
    page = out.read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page and "cdn" not in page
    assert page.count("<script>") == 3 and "<\\/script>" in page
    assert "vega@9.9.9, vega-lite@9.9.9, vega-embed@9.9.9" in page


def test_vega_template_errors(tmp_path, capsys):
    out = tmp_path / "t.html"
    assert vega_stage.main(["--node-modules", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert "vega/build/vega.min.js not found" in capsys.readouterr().err
    modules = fake_node_modules(tmp_path / "node_modules", body="var s = '{plot_divs}';")
    assert vega_stage.main(["--node-modules", str(modules), "--out", str(out)]) == 1
    assert "contains the DVC placeholder {plot_divs}" in capsys.readouterr().err
    assert not out.exists()


def test_lists_from_params_file(tmp_path):
    params = ROOT / "profiles" / "smoke.yaml"  # models [tiny-clip], methods [task_arithmetic, ties, tsv]
    metrics = make_run(methods=["task_arithmetic", "ties", "tsv"], setups=("mtl",)).write(tmp_path / "metrics", seed=0)
    out = tmp_path / "reports"
    assert report_stage.main(["--params", str(params), "--metrics", str(metrics), "--out", str(out),
                              "--setups", "mtl"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tiny-clip"]["mtl"]) == ["task_arithmetic", "ties", "tsv"]
    assert summary["seeds"] == [0]  # params seeds, read from metrics/<model>/seed0/
    assert "profile 'smoke' is not the 'paper' profile" in (out / "paper_comparison.md").read_text()


def test_lists_are_required_without_params(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_stage.main(["--metrics", str(tmp_path), "--models", "tiny-clip"])
    assert exit_info.value.code == 2
    assert "--methods, --profile required (or --params params.yaml)" in capsys.readouterr().err


def test_a_family_section_adds_its_tables_figures_captions_and_claims(tmp_path):
    from weaving.report import build_report
    from weaving.report.claims import HOLDS, Claim
    from weaving.report.load import load_metrics
    from weaving.report.sections import SECTIONS, Section, load_sections
    from weaving.report.tables import Table

    small = {"models": ["tiny-clip"], "setups": ("mtl",), "methods": ["ties"]}
    metrics = make_run(**small).write(tmp_path / "metrics")
    run = load_metrics(metrics, ["tiny-clip"], ["mtl"], ["ties"], ["avg", "random", "magmax"], ["all", "augmented"])
    table = Table(name="family_table", title="A family's table", columns=["task", "accuracy"], keys=["task", "acc"],
                  rows=[["mnist", 99.0]])
    claim = Claim(id="family_claim", section="thesis", statement="s", rule="r", verdict=HOLDS, evidence="e",
                  numbers={"x": 1.0})
    section = Section(title="Family", tables=[table], figures={"family.png": b"\x89PNG fake"},
                      captions={"family.png": "The family's figure"}, claims=[claim], text=["One paragraph."])
    plain = build_report({0: run}, "embedded")
    files = build_report({0: run}, "embedded", sections=[section])
    assert set(files) - set(plain) == {"tables/family_table.md", "tables/family_table.csv", "figures/family.png"}
    assert json.loads(files["claims.json"])["claims"][-1]["id"] == "family_claim"
    page = files["index.html"].decode()
    assert "The family&#x27;s figure" in page and "Family: One paragraph." in page and 'id="family_table"' in page
    with pytest.raises(ValueError, match="unknown report section 'nope'"):
        load_sections(["nope"], metrics, ["tiny-clip"])
    assert all(isinstance(module, str) for module in SECTIONS.values())


def test_the_stage_aggregates_the_replicates_it_is_given(tmp_path):
    """--seeds 3 5: each replicate read from <model>/seed<s>/, the summary's means and spreads over both
    (computed here by hand), and a replicate missing a file is named before anything is written."""
    import math
    from statistics import fmean

    metrics = tmp_path / "metrics"
    runs = {3: make_run(methods=["ties"], setups=("mtl",), seed=1), 5: make_run(methods=["ties"], setups=("mtl",), seed=2)}
    for seed, synthetic in runs.items():
        synthetic.write(metrics, seed=seed)
    out = tmp_path / "reports"
    args = ["--metrics", str(metrics), "--out", str(out), "--models", "tiny-clip", "--methods", "ties",
            "--setups", "mtl", "--profile", "smoke", "--seeds", "3", "5"]
    assert report_stage.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    baselines = [fmean(r.weave[("tiny-clip", "mtl", "ties")]["baseline"].values()) for r in runs.values()]
    entry = summary["tiny-clip"]["mtl"]["ties"]
    assert summary["seeds"] == [3, 5]
    assert entry["baseline"] == pytest.approx(fmean(baselines), abs=0.006)
    assert entry["baseline_std"] == pytest.approx(abs(baselines[0] - baselines[1]) / math.sqrt(2), abs=0.006)

    (metrics / "tiny-clip" / "seed5" / "reference.json").unlink()
    (out / "summary.json").unlink()
    assert report_stage.main(args) == 1
    assert not (out / "summary.json").exists()


def test_metrics_without_replicate_folders_list_no_seeds(tmp_path):
    """Without --seeds or --params the stage reads <model>/ directly: no seed is known, so none is named."""
    metrics = make_run(methods=["ties"], setups=("mtl",)).write(tmp_path / "metrics")
    out = tmp_path / "reports"
    assert report_stage.main(["--metrics", str(metrics), "--out", str(out), "--models", "tiny-clip", "--methods", "ties",
                              "--setups", "mtl", "--profile", "smoke"]) == 0
    assert json.loads((out / "summary.json").read_text())["seeds"] == []
    assert all(row["seeds"] == [] for row in json.loads((out / "claims.json").read_text())["claims"])
