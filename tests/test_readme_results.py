"""scripts/readme_results.py: README's Results tables regenerated from a report folder between markers.

A tiny hand-written report folder (two seeds, two methods, numbers worked out by hand below) checks
each block's text; a small README checks the marker replacement, its errors and `--check`'s exit
codes; the last test holds the committed README to the committed reports/replicates.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
assert SPEC is not None and SPEC.loader is not None
rr = importlib.util.module_from_spec(SPEC)
sys.modules["readme_results"] = rr
SPEC.loader.exec_module(rr)

SEEDS_CSV = """\
method,setup,seeds,baseline_mean,baseline_std,baseline_ci_low,baseline_ci_high,weaving_mean,weaving_std,weaving_ci_low,weaving_ci_high,gain_mean,gain_std,gain_ci_low,gain_ci_high
task_arithmetic,mtl,2,40.00,1.00,31.02,48.98,50.00,2.00,32.03,67.97,10.00,1.00,1.02,18.98
task_arithmetic,avg,2,41.00,1.50,27.52,54.48,45.00,0.50,40.51,49.49,4.00,0.43,0.10,7.90
ties,mtl,2,60.00,0.20,58.20,61.80,59.50,0.40,55.91,63.09,-0.50,0.56,-3.00,2.00
ties,avg,2,61.00,0.30,58.30,63.70,62.00,0.10,61.10,62.90,1.00,0.11,0.00,2.00
"""

BEYOND_CSV = """\
method,variant,mtl,avg,gain_over_lam_only
task_arithmetic,baseline,40.00,41.00,
task_arithmetic,lam_only,50.00,45.00,
task_arithmetic,tsv_pooling,49.00,44.50,-0.50
ties,baseline,60.00,61.00,
ties,lam_only,59.50,62.00,
ties,lam_x_density,59.00,62.00,0.00
ties,tsv_pooling,58.00,60.00,-2.00
"""

CLAIMS = [
    {"id": "a", "section": "5.2", "statement": "First claim.", "verdict": "holds", "evidence": "x | y",
     "seeds": [0, 1], "seeds_holding": 2},
    {"id": "b", "section": "3.2", "statement": "Second claim.", "verdict": "mixed", "evidence": "e2",
     "seeds": [0, 1], "seeds_holding": 0},
    {"id": "c", "section": "TSV-C", "statement": "A family's claim.", "verdict": "holds", "evidence": "e3",
     "seeds": [0], "seeds_holding": 1},
]

# Fine-tuned per seed: mnist 80, 82 -> 81.0 ± 1.414; ising 90, 92 -> 91.0 ± 1.414; the seeds' means
# 85 and 87 -> 86.0 ± 1.414. Zero-shot is the same in both seeds: 50, 70, mean 60 (no ±).
REFERENCES = {0: {"mnist": 80.0, "ising": 90.0}, 1: {"mnist": 82.0, "ising": 92.0}}
ZEROSHOT = {"mnist": 50.0, "ising": 70.0}

EXPECTED = {
    "start": """\
| | MNIST | Ising | mean |
| --- | ---: | ---: | ---: |
| zero-shot | 50.0 | 70.0 | 60.0 |
| fine-tuned | 81.0 ± 1.4 | 91.0 ± 1.4 | 86.0 ± 1.4 |
""",
    "table2": """\
| Method | Variant | MTL | Avg |
| --- | --- | ---: | ---: |
| Task Arithmetic | baseline (λ = 1) | 40.00 ± 1.00 | 41.00 ± 1.50 |
| Task Arithmetic | + Weight Weaving | 50.00 ± 2.00 | 45.00 ± 0.50 |
| Task Arithmetic | gain, 95% interval | **+10.00 [+1.02, +18.98]** | **+4.00 [+0.10, +7.90]** |
| TIES | baseline (λ = 1) | 60.00 ± 0.20 | 61.00 ± 0.30 |
| TIES | + Weight Weaving | 59.50 ± 0.40 | 62.00 ± 0.10 |
| TIES | gain, 95% interval | -0.50 [-3.00, +2.00] | +1.00 [+0.00, +2.00] |
""",
    "claims": """\
| Claim | Section | Verdict on the means | Holds alone in | This run (2 seeds) |
| --- | --- | --- | --- | --- |
| First claim. | 5.2 | **holds** | 2 of 2 seeds | x / y |
| Second claim. | 3.2 | **mixed** | 0 of 2 seeds | e2 |
""",
    "beyond_lam": """\
| Method | baseline (λ = 1) | λ only | λ × h | TSV as pooling |
| --- | ---: | ---: | ---: | ---: |
| Task Arithmetic | 41.00 | **45.00** | — | 44.50 |
| TIES | 61.00 | **62.00** | **62.00** | 60.00 |
""",
}


def make_report(folder: Path, finetuned_avg: float = 86.0) -> Path:
    (folder / "tables").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(
        {"m": {"zeroshot_avg": 60.0, "finetuned_avg": finetuned_avg}, "avg": {}, "seeds": [0, 1]}))
    (folder / "tables" / "seeds.csv").write_text(SEEDS_CSV)
    (folder / "tables" / "beyond_lam.csv").write_text(BEYOND_CSV)
    (folder / "claims.json").write_text(json.dumps({"claims": CLAIMS}))
    for seed, finetuned in REFERENCES.items():
        path = folder / "metrics" / "m" / f"seed{seed}" / "reference.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"model": "m", "zeroshot": ZEROSHOT, "finetuned": finetuned, "cl": {}}))
    return folder


def block(name: str, content: str = "| stale |\n") -> str:
    return f"<!-- results:{name}:begin -->\n{content}<!-- results:{name}:end -->\n"


def make_readme(path: Path, blocks: dict[str, str] | None = None) -> Path:
    blocks = blocks or {}
    parts = ["# Title\n\nIntro, with a number 63.6% the script must leave alone.\n\n"]
    for name in rr.BLOCKS:
        parts += [block(name, blocks.get(name, "| stale |\n")), f"\nProse after {name}.\n\n"]
    path.write_text("".join(parts) + "The end, no newline", encoding="utf-8")
    return path


def outside(text: str) -> str:
    """The text with every block's content removed (the markers kept)."""
    spans = rr.find_blocks(text, list(rr.BLOCKS))
    out, last = [], 0
    for a, b in sorted(spans.values()):
        out.append(text[last:a])
        last = b
    return "".join(out) + text[last:]


def run(*args: str | Path) -> int:
    return rr.main([str(a) for a in args])


def test_each_block_is_built_from_the_report_files(tmp_path: Path) -> None:
    report = rr.Report(make_report(tmp_path / "report"))
    assert rr.generate(report) == EXPECTED


def test_write_replaces_only_the_blocks_and_check_then_passes(tmp_path: Path, capsys) -> None:
    report = make_report(tmp_path / "report")
    readme = make_readme(tmp_path / "README.md")
    before = readme.read_text()
    assert run("--report", report, "--readme", readme, "--check") == 1
    assert "start, table2, claims, beyond_lam" in capsys.readouterr().out
    assert readme.read_text() == before, "--check wrote the README"
    assert run("--report", report, "--readme", readme) == 0
    after = readme.read_text()
    assert outside(after) == outside(before)
    assert after.endswith("The end, no newline")
    for name, content in EXPECTED.items():
        assert block(name, content) in after
    assert not list(tmp_path.glob(".README.md*")), "the temporary file was left behind"
    assert run("--report", report, "--readme", readme, "--check") == 0
    assert run("--report", report, "--readme", readme) == 0
    assert readme.read_text() == after


def test_check_names_only_the_blocks_that_differ(tmp_path: Path, capsys) -> None:
    report = make_report(tmp_path / "report")
    readme = make_readme(tmp_path / "README.md", {**EXPECTED, "table2": EXPECTED["table2"].replace("40.00", "40.01")})
    assert run("--report", report, "--readme", readme, "--check") == 1
    out = capsys.readouterr().out
    assert "table2" in out and "start" not in out and "claims" not in out and "beyond_lam" not in out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("<!-- results:claims:end -->\n", ""), "'claims'"),
    (lambda t: t.replace("<!-- results:table2:begin -->\n", ""), "'table2'"),
    (lambda t: t.replace(block("beyond_lam"), ""), "'beyond_lam'"),
    (lambda t: t + "\n" + block("start"), "'start' appears twice"),
    (lambda t: t + "\n" + block("nope"), "results:nope:begin"),
    (lambda t: t.replace("<!-- results:start:end -->\n", "x <!-- results:start:end -->\n"), "'start'"),
])
def test_a_missing_or_unbalanced_marker_is_an_error_naming_the_block(tmp_path: Path, capsys, edit, message) -> None:
    report = make_report(tmp_path / "report")
    readme = make_readme(tmp_path / "README.md")
    readme.write_text(edit(readme.read_text()))
    before = readme.read_text()
    with pytest.raises(rr.ReadmeError, match=message):
        rr.find_blocks(before, list(rr.BLOCKS))
    for extra in ((), ("--check",)):
        assert run("--report", report, "--readme", readme, *extra) == 2
        assert message in capsys.readouterr().err
    assert readme.read_text() == before


def test_metrics_that_disagree_with_the_summary_are_an_error(tmp_path: Path) -> None:
    report = rr.Report(make_report(tmp_path / "report", finetuned_avg=87.0))
    with pytest.raises(rr.ReadmeError, match="finetuned_avg"):
        rr.block_start(report)


def test_the_committed_readme_matches_reports_replicates() -> None:
    assert run("--report", ROOT / "reports" / "replicates", "--readme", ROOT / "README.md", "--check") == 0, \
        "README.md's Results tables differ from reports/replicates: run python scripts/readme_results.py"
