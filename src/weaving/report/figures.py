"""The report's figures (matplotlib, Agg), drawn from the rows of `plot_data`.

Colours: the Okabe-Ito palette (colour-blind safe); heat maps use `cividis`.
PNG bytes are deterministic (no date or software metadata).
"""

from __future__ import annotations

import io
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from tqdm import tqdm  # noqa: E402

from weaving.catalogue import POOLING_ENTRIES, SETUP_ENTRIES  # noqa: E402
from weaving.report import plot_data  # noqa: E402
from weaving.report.load import RunMetrics, SimilarityMatrix  # noqa: E402
from weaving.report.tables import method_label, safe_name  # noqa: E402

OKABE_ITO = {"orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
VARIANT_COLOURS = {"baseline": OKABE_ITO["vermillion"], "weaving": OKABE_ITO["blue"]}
POOLING_COLOURS = {name: entry.colour for name, entry in POOLING_ENTRIES.items()}
POOL_OVER_STYLES = {"all": "-", "augmented": "--"}
SETUP_TITLES = {**{k: v.label.capitalize() for k, v in SETUP_ENTRIES.items()}, "avg": "Average over setups"}
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100}


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render and close `fig`; deterministic PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _accuracy(rows: list[dict], model: str, setup: str, method: str, variant: str) -> float:
    return next(row["accuracy"] for row in rows if row["model"] == model and row["setup"] == setup
                and row["method"] == method and row["variant"] == variant)


def figure_baseline_vs_weaving(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> Figure:
    """Figure 1: task-averaged accuracy per method, baseline lam vs Weight Weaving; a panel per setup
    (and their average), a row per model. With several `seed_runs` (`run` their mean), error bars of
    ± one sample standard deviation over seeds of each bar's value."""
    rows = plot_data.baseline_vs_weaving(run)
    seed_rows = [plot_data.baseline_vs_weaving(r) for r in seed_runs] if len(seed_runs) > 1 else []
    panels = [*run.setups, "avg"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(run.models), len(panels), squeeze=False, sharey=True, layout="constrained",
                                 figsize=(max(3.2, 0.55 * len(run.methods) + 1.2) * len(panels),
                                          3.6 * len(run.models) + 0.6))
        x = np.arange(len(run.methods))
        width = 0.38
        for r, model in enumerate(run.models):
            for c, setup in enumerate(panels):
                ax = axes[r][c]
                for k, variant in enumerate(("baseline", "weaving")):
                    values = [_accuracy(rows, model, setup, m, variant) for m in run.methods]
                    errors = {}
                    if seed_rows:
                        errors = {"yerr": [float(np.std([_accuracy(sr, model, setup, m, variant) for sr in seed_rows],
                                                        ddof=1)) for m in run.methods],
                                  "capsize": 3, "error_kw": {"elinewidth": 1, "ecolor": OKABE_ITO["black"]}}
                    ax.bar(x + (k - 0.5) * width, values, width, color=VARIANT_COLOURS[variant],
                           label="data-free baseline (λ = 1)" if variant == "baseline" else "Weight Weaving (avg, A*)",
                           **errors)
                ax.set_xticks(x, [method_label(m) for m in run.methods], rotation=40, ha="right")
                ax.set_ylim(0, 100)
                ax.grid(axis="y", alpha=0.3)
                ax.set_axisbelow(True)
                ax.set_title(SETUP_TITLES[setup] + (f" — {model}" if len(run.models) > 1 else ""))
                if c == 0:
                    ax.set_ylabel("average accuracy (%)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        title = "Data-free merging: baseline λ = 1 vs Weight Weaving"
        fig.suptitle(title + (f" ({run.models[0]})" if len(run.models) == 1 else ""))
    return fig


def _kde_counts(values: Sequence[float], grid: np.ndarray, bin_width: float) -> np.ndarray | None:
    """Gaussian KDE scaled to histogram counts; None when the data cannot support one."""
    from scipy.stats import gaussian_kde

    data = np.asarray(values, dtype=float)
    if data.size < 2 or np.ptp(data) == 0:
        return None
    try:
        density = gaussian_kde(data)(grid)
    except (np.linalg.LinAlgError, ValueError):
        return None
    return density * data.size * bin_width


def figure_best_lambda(run: RunMetrics, model: str) -> Figure:
    """Figure 2: per method (row) and setup (column), the histogram of each task's best lam over the
    search space, with a kernel density estimate."""
    rows = [r for r in plot_data.best_lambda(run) if r["model"] == model]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(run.methods), len(run.setups), squeeze=False, layout="constrained",
                                 figsize=(3.6 * len(run.setups), 2.2 * len(run.methods) + 0.8))
        for i, method in enumerate(run.methods):
            for j, setup in enumerate(run.setups):
                ax = axes[i][j]
                record = run.get(model, setup, method)
                lambdas = np.asarray(record.lambdas)
                steps = np.diff(np.sort(np.unique(lambdas)))
                step = float(steps.min()) if steps.size else 0.1
                best = [r["best_lambda"] for r in rows if r["setup"] == setup and r["method"] == method]
                counts = Counter(best)
                ax.bar(list(counts), list(counts.values()), width=step * 0.9, color=OKABE_ITO["sky_blue"],
                       edgecolor=OKABE_ITO["blue"], label="tasks whose best λ it is")
                lo, hi = float(lambdas.min()) - step, float(lambdas.max()) + step
                grid = np.linspace(lo, hi, 200)
                kde = _kde_counts(best, grid, step)
                if kde is not None:
                    ax.plot(grid, kde, color=OKABE_ITO["black"], lw=1.5, label="kernel density estimate")
                else:
                    ax.text(0.03, 0.95, "KDE n/a (one value)", transform=ax.transAxes, ha="left", va="top",
                            fontsize=8, color="0.35")
                ax.axvline(record.baseline_lam, color=OKABE_ITO["vermillion"], ls=":", lw=1.5,
                           label="data-free baseline λ")
                ax.set_xlim(lo, hi)
                ax.set_ylim(0, max(counts.values()) + 1)
                ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                if i == 0:
                    ax.set_title(SETUP_TITLES[setup])
                if j == 0:
                    ax.set_ylabel(f"{method_label(method)}\ntasks (count)")
                if i == len(run.methods) - 1:
                    ax.set_xlabel("best λ on the evaluation data")
        legend_handles = [Line2D([], [], color=OKABE_ITO["black"], lw=1.5),
                          matplotlib.patches.Patch(facecolor=OKABE_ITO["sky_blue"], edgecolor=OKABE_ITO["blue"]),
                          Line2D([], [], color=OKABE_ITO["vermillion"], ls=":", lw=1.5)]
        fig.legend(legend_handles, ["kernel density estimate", "tasks whose best λ it is", "data-free baseline λ"],
                   loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(f"Distribution of each task's best λ ({model})")
    return fig


def _heatmap(ax: plt.Axes, m: SimilarityMatrix, title: str, vmin: float, vmax: float):
    data = np.asarray(m.matrix)
    image = ax.imshow(data, cmap="cividis", vmin=vmin, vmax=vmax)
    n = len(m.labels)
    short = [label.rsplit("/", 1)[-1] for label in m.labels]
    ax.set_xticks(range(n), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    if n <= 12:
        size = 8 if n <= 8 else 6
        for i in range(n):
            for j in range(n):
                shade = (data[i, j] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=size,
                        color="black" if shade > 0.55 else "white")
    ax.set_title(title)
    ax.set_xlabel("task vector")
    return image


def figure_similarity(run: RunMetrics, model: str) -> Figure:
    """Figure 3: pairwise cosine similarity of task vectors, sequential fine-tuning (each benchmark)
    vs individual fine-tuning, as annotated heat maps on one colour scale."""
    sim = run.similarity[model]
    panels = [(f"Sequential fine-tuning: {bench}", m) for bench, m in sim.sequential.items()]
    panels.append(("Individual fine-tuning", sim.individual))
    low = min(min(min(row) for row in m.matrix) for _, m in panels)
    vmin, vmax = min(0.0, math.floor(low * 10) / 10), 1.0
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                                 figsize=(4.4 * len(panels) + 1.2, 5.4))
        image = None
        for k, (ax, (title, m)) in enumerate(zip(axes[0], panels)):
            image = _heatmap(ax, m, title, vmin, vmax)
            if k == 0:
                ax.set_ylabel("task vector")
        fig.colorbar(image, ax=list(axes[0]), label="cosine similarity", shrink=0.85)
        fig.suptitle(f"Pairwise cosine similarity of task vectors ({model})")
    return fig


def figure_accuracy_vs_lambda(run: RunMetrics, model: str, seed_runs: Sequence[RunMetrics] = ()) -> Figure:
    """Task-averaged accuracy vs lam per method (row) and setup (column); Weight Weaving for each
    pooling as horizontal lines; the baseline and recommended lam marked. With several `seed_runs`
    (`run` their mean), a shaded band of ± one sample standard deviation over seeds around the curve."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(run.methods), len(run.setups), squeeze=False, layout="constrained",
                                 figsize=(3.8 * len(run.setups), 2.4 * len(run.methods) + 1.2))
        for i, method in enumerate(run.methods):
            for j, setup in enumerate(run.setups):
                ax = axes[i][j]
                r = run.get(model, setup, method)
                ax.plot(r.lambdas, r.sweep_avg(), color=OKABE_ITO["black"], marker="o", ms=3, lw=1.5)
                if len(seed_runs) > 1:
                    curves = np.asarray([sr.get(model, setup, method).sweep_avg() for sr in seed_runs])
                    mean, std = np.asarray(r.sweep_avg()), curves.std(axis=0, ddof=1)
                    ax.fill_between(r.lambdas, mean - std, mean + std, color=OKABE_ITO["black"], alpha=0.15, lw=0)
                for o in run.pool_overs:
                    for p in run.poolings:
                        ax.axhline(r.weaving_avg(p, o), color=POOLING_COLOURS[p], ls=POOL_OVER_STYLES[o], lw=1.4)
                ax.axvline(r.baseline_lam, color=OKABE_ITO["vermillion"], ls=":", lw=1.5)
                ax.plot([r.baseline_lam], [r.baseline_avg], marker="s", color=OKABE_ITO["vermillion"], ms=6)
                ax.plot([r.recommended_lam], [r.recommended_avg], marker="*", color=OKABE_ITO["orange"], ms=11,
                        markeredgecolor="black", markeredgewidth=0.5)
                ax.grid(alpha=0.3)
                if i == 0:
                    ax.set_title(SETUP_TITLES[setup])
                if j == 0:
                    ax.set_ylabel(f"{method_label(method)}\naccuracy (%)")
                if i == len(run.methods) - 1:
                    ax.set_xlabel("λ")
        handles = [Line2D([], [], color=OKABE_ITO["black"], marker="o", ms=3, label="merge at λ (task average)"),
                   Line2D([], [], color=OKABE_ITO["vermillion"], marker="s", ls=":", label="data-free baseline λ"),
                   Line2D([], [], color=OKABE_ITO["orange"], marker="*", ms=10, ls="", markeredgecolor="black",
                          label="authors' recommended λ")]
        if len(seed_runs) > 1:
            handles.append(matplotlib.patches.Patch(facecolor=OKABE_ITO["black"], alpha=0.15,
                                                    label=f"± 1 std over {len(seed_runs)} seeds"))
        for o in run.pool_overs:
            for p in run.poolings:
                handles.append(Line2D([], [], color=POOLING_COLOURS[p], ls=POOL_OVER_STYLES[o],
                                      label=f"Weight Weaving: {p} over {'A*' if o == 'all' else 'A'}"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(f"Accuracy vs λ and Weight Weaving ({model})")
    return fig


def figure_jobs(run: RunMetrics, seed_runs: Sequence[RunMetrics] = ()) -> list[tuple[str, Callable[[], Figure]]]:
    """(file name under `reports/figures/`, function drawing it) for every figure; `seed_runs`: the
    seeds' runs when `run` is their mean (error bars and bands)."""
    jobs: list[tuple[str, Callable[[], Figure]]] = [
        ("figure1_baseline_vs_weaving.png", lambda: figure_baseline_vs_weaving(run, seed_runs))]
    for model in run.models:
        name = safe_name(model)
        jobs += [(f"figure2_best_lambda_{name}.png", lambda model=model: figure_best_lambda(run, model)),
                 (f"figure3_similarity_{name}.png", lambda model=model: figure_similarity(run, model)),
                 (f"accuracy_vs_lambda_{name}.png",
                  lambda model=model: figure_accuracy_vs_lambda(run, model, seed_runs))]
    return jobs


def all_figures(run: RunMetrics, progress: bool = False, seed_runs: Sequence[RunMetrics] = ()) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by path relative to `reports/figures/`; a progress bar on a terminal.
    `seed_runs`: each seed's run when `run` is their mean (several: error bars and ± std bands)."""
    jobs = figure_jobs(run, seed_runs)
    bar = tqdm(jobs, desc="report figures", unit="fig", file=sys.stderr, disable=None if progress else True)
    return {name: png_bytes(draw()) for name, draw in bar}
