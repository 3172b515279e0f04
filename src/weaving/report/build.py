"""Every report output, built in memory from validated metrics (nothing here touches the disk)."""

from __future__ import annotations

from weaving.report import figures as figs
from weaving.report.claims import check_claims, claims_json, claims_markdown
from weaving.report.html import index_html
from weaving.report.load import RunMetrics
from weaving.report.paper import paper_comparison
from weaving.report.plot_data import all_plot_data
from weaving.report.sections import Section
from weaving.report.summary import summary_json
from weaving.report.tables import all_tables, safe_name


def figure_captions(run: RunMetrics) -> dict[str, str]:
    captions = {"figure1_baseline_vs_weaving.png":
                "Figure 1: task-averaged accuracy per method, data-free baseline (λ = 1) vs Weight Weaving "
                "(avg pooling over A*), per setup and averaged over setups."}
    for model in run.models:
        name = safe_name(model)
        captions[f"figure2_best_lambda_{name}.png"] = (
            f"Figure 2 ({model}): histogram of each task's best λ (chosen on evaluation data) per method and "
            f"setup, with a Gaussian kernel density estimate.")
        captions[f"figure3_similarity_{name}.png"] = (
            f"Figure 3 ({model}): pairwise cosine similarity of task vectors, sequential vs individual fine-tuning.")
        captions[f"accuracy_vs_lambda_{name}.png"] = (
            f"Accuracy vs λ ({model}): task-averaged accuracy of the merge at each λ, Weight Weaving for each "
            f"pooling as horizontal lines, the baseline and recommended λ marked.")
    return captions


def build_report(run: RunMetrics, profile: str, progress: bool = False,
                 sections: list[Section] = ()) -> dict[str, bytes]:
    """Every output file's bytes, keyed by its path relative to the report folder.

    summary.json, claims.md/.json, paper_comparison.md, index.html, tables/*.md|csv,
    figures/*.png, plots/*.csv (long format) and plots/dvc/** (one series per file).
    `progress` shows a bar over the figures (the slow part) when stderr is a terminal.
    `sections` (weaving.report.sections) add the algorithm families' tables, figures and claims.
    """
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a non-empty string, got {profile!r}")
    files: dict[str, bytes] = {"summary.json": summary_json(run).encode()}
    tables = all_tables(run)
    for table in tables:
        files[f"tables/{table.name}.md"] = table.to_markdown().encode()
        files[f"tables/{table.name}.csv"] = table.to_csv().encode()
    for name, text in all_plot_data(run).items():
        files[f"plots/{name}"] = text.encode()
    figures = figs.all_figures(run, progress=progress)
    for name, png in figures.items():
        files[f"figures/{name}"] = png
    claims = check_claims(run)
    captions = figure_captions(run)
    intro = [f"Profile: {profile}. Models: {', '.join(run.models)}. Setups: {', '.join(run.setups)}. "
             f"Methods: {', '.join(run.methods)}. Poolings: {', '.join(run.poolings)} over "
             f"{', '.join(run.pool_overs)}. Accuracies in percent; averages are over each setup's evaluation tasks."]
    for section in sections:
        for table in section.tables:
            files[f"tables/{table.name}.md"] = table.to_markdown().encode()
            files[f"tables/{table.name}.csv"] = table.to_csv().encode()
        for name, png in section.figures.items():
            files[f"figures/{name}"] = png
        tables = tables + section.tables
        figures = {**figures, **section.figures}
        captions.update(section.captions)
        claims = claims + section.claims
        intro += [f"{section.title}: {paragraph}" for paragraph in section.text]
    files["claims.md"] = claims_markdown(claims).encode()
    files["claims.json"] = claims_json(claims).encode()
    comparison = paper_comparison(run, profile)
    files["paper_comparison.md"] = comparison.to_markdown().encode()
    if comparison.per_task is not None:
        files[f"tables/{comparison.per_task.name}.md"] = comparison.per_task.to_markdown().encode()
        files[f"tables/{comparison.per_task.name}.csv"] = comparison.per_task.to_csv().encode()
    files["index.html"] = index_html("Weight Weaving: report", intro, claims, tables, figures,
                                     captions, comparison).encode()
    return files
