"""Every report output, built in memory from validated metrics (nothing here touches the disk)."""

from __future__ import annotations

from collections.abc import Mapping

from weaving.report import figures as figs
from weaving.report.claims import check_seed_claims, claims_json, claims_markdown, section_claims
from weaving.report.html import index_html
from weaving.report.load import RunMetrics
from weaving.report.paper import paper_comparison
from weaving.report.plot_data import all_plot_data
from weaving.report.sections import Section
from weaving.report.seeds import MEAN_NOTE, mean_run, seeds_table, seeds_text
from weaving.report.summary import summary_json
from weaving.report.tables import all_tables, safe_name


def figure_captions(run: RunMetrics, seeds: list[int] | None = None) -> dict[str, str]:
    """Each figure's caption; with several `seeds`, the figures show means over seeds with their spread."""
    several = seeds is not None and len(seeds) > 1
    over = f" Means over seeds {', '.join(map(str, seeds))}" if several else ""
    captions = {"figure1_baseline_vs_weaving.png":
                "Figure 1: task-averaged accuracy per method, data-free baseline (λ = 1) vs Weight Weaving "
                "(avg pooling over A*), per setup and averaged over setups."
                + (f"{over}; error bars: ± one standard deviation over seeds." if several else "")}
    for model in run.models:
        name = safe_name(model)
        captions[f"figure2_best_lambda_{name}.png"] = (
            f"Figure 2 ({model}): histogram of each task's best λ (chosen on evaluation data) per method and "
            f"setup, with a Gaussian kernel density estimate.")
        captions[f"figure3_similarity_{name}.png"] = (
            f"Figure 3 ({model}): pairwise cosine similarity of task vectors, sequential vs individual fine-tuning.")
        captions[f"accuracy_vs_lambda_{name}.png"] = (
            f"Accuracy vs λ ({model}): task-averaged accuracy of the merge at each λ, Weight Weaving for each "
            f"pooling as horizontal lines, the baseline and recommended λ marked."
            + (f"{over}; shaded band: ± one standard deviation over seeds of the merge at each λ." if several else ""))
        if several:
            for figure in (f"figure2_best_lambda_{name}.png", f"figure3_similarity_{name}.png"):
                captions[figure] += f"{over} (best λ of the mean accuracy curve; mean cosines)."
    return captions


def build_report(runs: Mapping[int, RunMetrics], profile: str, progress: bool = False,
                 sections: list[Section] = (), section_seed: int | None = None) -> dict[str, bytes]:
    """Every output file's bytes, keyed by its path relative to the report folder.

    `runs`: one run per seed (seed -> `RunMetrics`, in the params' order). One seed gives the
    report of that run. Several (docs/contracts.md, "Report outputs"): summary.json holds each
    number's mean over seeds with its standard deviation and 95% t-interval, claims are checked on
    the mean run with the gain rule over seeds and count the seeds each holds in, tables/seeds.*
    gives the replicates, the other tables and figures show means over seeds (figures with ± one
    standard deviation). The `sections` are built by the caller from one replicate, `section_seed`
    (default: the first seed); their claims name it. A key None stands for a run without replicate
    folders (its seed unknown: `seeds` is empty in summary.json and claims.json).

    summary.json, claims.md/.json, paper_comparison.md, index.html, tables/*.md|csv,
    figures/*.png, plots/*.csv (long format) and plots/dvc/** (one series per file).
    `progress` shows a bar over the figures (the slow part) when stderr is a terminal.
    `sections` (weaving.report.sections) add the algorithm families' tables, figures and claims.
    """
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a non-empty string, got {profile!r}")
    if isinstance(runs, RunMetrics) or not isinstance(runs, Mapping) or not runs:
        raise TypeError("build_report takes {seed: RunMetrics} (one run per seed), got "
                        f"{type(runs).__name__}")
    seeds = list(runs)
    run = mean_run(runs)
    seed_runs = [runs[s] for s in seeds] if len(seeds) > 1 else []
    files: dict[str, bytes] = {"summary.json": summary_json(runs).encode()}
    tables = all_tables(run)
    if seed_runs:
        for table in tables:
            table.notes.append(MEAN_NOTE.format(seeds=", ".join(map(str, seeds))))
        tables = [seeds_table(runs), *tables]
    for table in tables:
        files[f"tables/{table.name}.md"] = table.to_markdown().encode()
        files[f"tables/{table.name}.csv"] = table.to_csv().encode()
    for name, text in all_plot_data(run, runs if seed_runs else None).items():
        files[f"plots/{name}"] = text.encode()
    figures = figs.all_figures(run, progress=progress, seed_runs=seed_runs)
    for name, png in figures.items():
        files[f"figures/{name}"] = png
    claims = check_seed_claims(runs)
    captions = figure_captions(run, seeds)
    intro = [f"Profile: {profile}. Models: {', '.join(run.models)}. Setups: {', '.join(run.setups)}. "
             f"Methods: {', '.join(run.methods)}. Poolings: {', '.join(run.poolings)} over "
             f"{', '.join(run.pool_overs)}. Accuracies in percent; averages are over each setup's evaluation tasks."
             + (f" {seeds_text(seeds)}" if seed_runs else "")]
    for section in sections:
        for table in section.tables:
            files[f"tables/{table.name}.md"] = table.to_markdown().encode()
            files[f"tables/{table.name}.csv"] = table.to_csv().encode()
        for name, png in section.figures.items():
            files[f"figures/{name}"] = png
        tables = tables + section.tables
        figures = {**figures, **section.figures}
        captions.update(section.captions)
        claims = claims + section_claims(section.claims, [seeds[0] if section_seed is None else section_seed])
        intro += [f"{section.title}: {paragraph}" for paragraph in section.text]
    files["claims.md"] = claims_markdown(claims).encode()
    files["claims.json"] = claims_json(claims).encode()
    comparison = paper_comparison(run, profile)
    if seed_runs:
        comparison.paragraphs.insert(0, f"Several seeds: 'this run' is the mean over seeds {', '.join(map(str, seeds))} "
                                        "(each accuracy averaged over seeds); tables/seeds gives the spread.")
    files["paper_comparison.md"] = comparison.to_markdown().encode()
    if comparison.per_task is not None:
        files[f"tables/{comparison.per_task.name}.md"] = comparison.per_task.to_markdown().encode()
        files[f"tables/{comparison.per_task.name}.csv"] = comparison.per_task.to_csv().encode()
    files["index.html"] = index_html("Weight Weaving: report", intro, claims, tables, figures,
                                     captions, comparison).encode()
    return files
