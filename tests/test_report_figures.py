"""Figures render as non-trivial PNGs, also on degenerate data; plot data matches the metrics."""

from __future__ import annotations

import csv
import io
from statistics import mean

import matplotlib.image
import numpy as np
import pytest
from report_fixtures import concentrated_best_lambda, make_run

from weaving.report import load_metrics
from weaving.report.figures import all_figures
from weaving.report.plot_data import all_plot_data

METHODS = ["ties", "iso_c"]


def decode(png: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def assert_non_trivial(name: str, png: bytes) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    pixels = decode(png)
    height, width = pixels.shape[:2]
    assert width >= 600 and height >= 300, (name, pixels.shape)
    assert pixels[..., :3].std() > 0.05, f"{name} looks blank"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    synthetic = make_run(models=["tiny-clip", "ViT-B-32"], methods=METHODS)
    return load_metrics(synthetic.write(tmp_path_factory.mktemp("metrics")), ["tiny-clip", "ViT-B-32"],
                        ["mtl", "cl", "dg"], METHODS)


def test_every_figure_renders(run):
    figures = all_figures(run)
    expected = {"figure1_baseline_vs_weaving.png"} | {
        f"{kind}_{model}.png" for kind in ("figure2_best_lambda", "figure3_similarity", "accuracy_vs_lambda")
        for model in ("tiny-clip", "ViT-B-32")}
    assert set(figures) == expected
    for name, png in figures.items():
        assert_non_trivial(name, png)


def test_degenerate_data_still_renders(tmp_path):
    # One task per setup (no KDE possible), every best lam equal, one split per CL benchmark.
    tasks = {"mtl": ["mnist"], "cl": ["mnist-s2"], "dg": ["textures"]}
    synthetic = make_run(methods=["magmax"], tasks=tasks, best_lambda=concentrated_best_lambda)
    synthetic.similarity["tiny-clip"]["sequential"] = {"mnist-s2": {"labels": ["split_0"], "matrix": [[1.0]]}}
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], ["mtl", "cl", "dg"], ["magmax"])
    for name, png in all_figures(run).items():
        assert_non_trivial(name, png)


def test_png_bytes_are_deterministic(tmp_path):
    synthetic = make_run(methods=["ties"], setups=("mtl",))
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], ["mtl"], ["ties"])
    assert all_figures(run) == all_figures(run)


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_plot_data_long_format(tmp_path):
    synthetic = make_run(methods=METHODS)
    run = load_metrics(synthetic.write(tmp_path), ["tiny-clip"], ["mtl", "cl", "dg"], METHODS)
    files = all_plot_data(run)
    sweep = read_csv(files["accuracy_vs_lambda.csv"])
    for (model, setup, method), record in synthetic.weave.items():
        rows = [r for r in sweep if (r["model"], r["setup"], r["method"]) == (model, setup, method)]
        assert [float(r["lambda"]) for r in rows] == pytest.approx(record["lambdas"])
        for r, i in zip(rows, range(len(record["lambdas"]))):
            assert float(r["accuracy"]) == pytest.approx(mean(record["sweep"][t][i] for t in record["tasks"]),
                                                         abs=1e-4)
        series = read_csv(files[f"dvc/accuracy_vs_lambda/{model}__{setup}__{method}.csv"])
        assert [float(r["accuracy"]) for r in series] == [float(r["accuracy"]) for r in rows]
        woven = mean(record["weaving"]["magmax"]["augmented"][t] for t in record["tasks"])
        assert [float(r["weaving_magmax_augmented"]) for r in series] == pytest.approx([woven] * len(series), abs=1e-4)
    best = read_csv(files["best_lambda.csv"])
    record = synthetic.weave[("tiny-clip", "dg", "iso_c")]
    for r in (r for r in best if (r["setup"], r["method"]) == ("dg", "iso_c")):
        accuracies = record["sweep"][r["task"]]
        assert float(r["best_lambda"]) == pytest.approx(record["lambdas"][accuracies.index(max(accuracies))])
    bars = read_csv(files["baseline_vs_weaving.csv"])
    assert {r["setup"] for r in bars} == {"mtl", "cl", "dg", "avg"}
    similarity = read_csv(files["similarity.csv"])
    individual = synthetic.similarity["tiny-clip"]["individual"]
    cells = [r for r in similarity if r["fine_tuning"] == "individual"]
    assert len(cells) == len(individual["labels"]) ** 2
    assert float(cells[1]["cosine"]) == pytest.approx(individual["matrix"][0][1], abs=1e-4)
