"""The report's tables (the paper's Tables 1-3, per-dataset tables, the oracle table).

Each builder is a pure function of `RunMetrics` returning a `Table`, which renders itself
as markdown (best values in bold), CSV (machine-readable column names) and HTML.
"""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass, field
from statistics import fmean
from typing import NamedTuple

from weaving.catalogue import SETUP_ENTRIES, method_label
from weaving.report.load import RunMetrics, WeaveMetrics


class Label(NamedTuple):
    """A text cell shown as `text` (markdown, HTML) and written as `key` in CSV."""

    text: str
    key: str


class Stat(NamedTuple):
    """A number over seeds: shown as "mean ± std [low, high]" (markdown, HTML), written in CSV as four
    columns `<key>_mean`, `<key>_std`, `<key>_ci_low`, `<key>_ci_high` (empty when None: one seed)."""

    mean: float
    std: float | None
    low: float | None
    high: float | None

    def text(self) -> str:
        if self.std is None or self.low is None or self.high is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f} [{self.low:.2f}, {self.high:.2f}]"


STAT_PARTS = ("mean", "std", "ci_low", "ci_high")

Cell = str | float | Label | Stat | None

SETUP_SHORT = {name: entry.short for name, entry in SETUP_ENTRIES.items()}


@dataclass
class Table:
    """A rectangular table; `columns` are display names, `keys` the CSV names (same length)."""

    name: str
    title: str
    columns: list[str]
    keys: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.keys):
            raise ValueError(f"table {self.name}: {len(self.columns)} columns but {len(self.keys)} keys")

    def column(self, key: str) -> list[Cell]:
        j = self.keys.index(key)
        return [row[j] for row in self.rows]

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines.append("| " + " | ".join(_md_escape(c) for c in self.columns) + " |")
        lines.append("| " + " | ".join("---:" if self._numeric(j) else "---" for j in range(len(self.columns))) + " |")
        for i, row in enumerate(self.rows):
            cells = []
            for j, value in enumerate(row):
                text = _md_escape(_fmt(value, missing="—"))
                cells.append(f"**{text}**" if (i, j) in self.bold and value is not None else text)
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        stats = [any(isinstance(row[j], Stat) for row in self.rows) for j in range(len(self.keys))]
        writer.writerow([name for key, stat in zip(self.keys, stats)
                         for name in ([f"{key}_{part}" for part in STAT_PARTS] if stat else [key])])
        for row in self.rows:
            cells = []
            for value, stat in zip(row, stats):
                if not stat:
                    cells.append(_fmt(value, missing="", csv=True))
                elif isinstance(value, Stat):
                    cells += [_fmt(v, missing="", csv=True) for v in value]
                else:
                    cells += [_fmt(value, missing="", csv=True)] + [""] * (len(STAT_PARTS) - 1)
            writer.writerow(cells)
        return buffer.getvalue()

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            cells = []
            for j, value in enumerate(row):
                text = html.escape(_fmt(value, missing="—"))
                cls = ' class="num"' if isinstance(value, (float, Stat)) else ""
                cells.append(f"<td{cls}><b>{text}</b></td>" if (i, j) in self.bold else f"<td{cls}>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in self.notes)
        return (f"<h3 id=\"{self.name}\">{html.escape(self.title)}</h3>\n<table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{notes}\n")

    def _numeric(self, j: int) -> bool:
        return any(isinstance(row[j], (float, Stat)) for row in self.rows)


def _fmt(value: Cell, missing: str, csv: bool = False) -> str:
    if isinstance(value, Label):
        return value.key if csv else value.text
    if isinstance(value, Stat):
        return value.text()
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def safe_name(name: str) -> str:
    """A file-name-safe form of a model or task name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def method_cell(method: str) -> Label:
    return Label(method_label(method), method)


def _grid(run: RunMetrics) -> list[tuple[str, str]]:
    """(setup, model) pairs in column order: setups outer, models inner (as the paper)."""
    return [(setup, model) for setup in run.setups for model in run.models]


def _grid_columns(run: RunMetrics) -> tuple[list[str], list[str]]:
    cols = [f"{SETUP_SHORT[s]} {m}" for s, m in _grid(run)]
    keys = [f"{s}/{m}" for s, m in _grid(run)]
    return cols, keys


def _lam_label(values: set[float]) -> str:
    return f"{values.pop():g}" if len(values) == 1 else "varies"


def _bold_column_max(table: Table, columns: range) -> None:
    for j in columns:
        values = [row[j] for row in table.rows if isinstance(row[j], float)]
        if not values:
            continue
        best = max(values)
        for i, row in enumerate(table.rows):
            if isinstance(row[j], float) and round(row[j], 2) == round(best, 2):
                table.bold.add((i, j))


def table1(run: RunMetrics) -> Table:
    """Table 1: each method's average accuracy per setup and model at the recommended lam, and the Avg."""
    cols, keys = _grid_columns(run)
    table = Table("table1_recommended", "Table 1: average accuracy (%) at the authors' recommended λ (privileged)",
                  ["Method", "λ", *cols, "Avg"], ["method", "lam", *keys, "avg"])
    for method in run.methods:
        cells = [run.get(m, s, method).recommended_avg for s, m in _grid(run)]
        lams = {run.get(m, s, method).recommended_lam for s, m in _grid(run)}
        table.rows.append([method_cell(method), _lam_label(lams), *cells, fmean(cells)])
    _bold_column_max(table, range(2, len(table.columns)))
    table.notes.append("Each cell: mean over the setup's evaluation tasks; Avg: mean over setups and models. "
                       "Bold: best method per column. The recommended λ was tuned by each method's authors on "
                       "evaluation data.")
    return table


def table2(run: RunMetrics) -> Table:
    """Table 2: data-free baseline (lam = 1) against Weight Weaving (avg pooling over A*) per method."""
    cols, keys = _grid_columns(run)
    table = Table("table2_data_free", "Table 2: data-free average accuracy (%): baseline λ = 1 vs Weight Weaving",
                  ["Method", "Variant", *cols, "Avg", "Δ vs baseline"],
                  ["method", "variant", *keys, "avg", "gain"])
    for method in run.methods:
        records = [run.get(m, s, method) for s, m in _grid(run)]
        base = [r.baseline_avg for r in records]
        woven = [r.weaving_avg("avg", "all") for r in records]
        lam = _lam_label({r.baseline_lam for r in records})
        i = len(table.rows)
        table.rows.append([method_cell(method), Label(f"baseline (λ = {lam})", "baseline"), *base, fmean(base), None])
        table.rows.append([method_cell(method), Label("+ Weight Weaving", "weaving"), *woven, fmean(woven),
                           fmean(woven) - fmean(base)])
        for j in range(2, 2 + len(base) + 1):
            b, w = table.rows[i][j], table.rows[i + 1][j]
            assert isinstance(b, float) and isinstance(w, float)
            if round(b, 2) >= round(w, 2):
                table.bold.add((i, j))
            if round(w, 2) >= round(b, 2):
                table.bold.add((i + 1, j))
    table.notes.append("Weight Weaving: pooling 'avg' over A* (the task vectors and every λ-scaled merge of the "
                       "search space). Bold: the better of each pair. Δ: Avg of Weight Weaving minus Avg of the "
                       "baseline, in percentage points.")
    return table


def table3(run: RunMetrics) -> Table:
    """Table 3: Weight Weaving's average over setups and models, per pooling and pool_over."""
    variants = [(p, o) for o in run.pool_overs for p in run.poolings]
    table = Table("table3_pooling", "Table 3: Weight Weaving's average accuracy (%) per pooling function",
                  ["Method", *[f"{p} over {'A*' if o == 'all' else 'A'}" for p, o in variants]],
                  ["method", *[f"{p}/{o}" for p, o in variants]])
    for method in run.methods:
        records = [run.get(m, s, method) for s, m in _grid(run)]
        table.rows.append([method_cell(method), *[fmean(r.weaving_avg(p, o) for r in records) for p, o in variants]])
    for i, row in enumerate(table.rows):
        values = [v for v in row[1:] if isinstance(v, float)]
        for j, value in enumerate(row):
            if isinstance(value, float) and round(value, 2) == round(max(values), 2):
                table.bold.add((i, j))
    table.notes.append("Mean over setups and models of each setup's task-averaged accuracy. A* = task vectors and "
                       "λ-scaled merges (pool_over 'all', the paper's default); A = λ-scaled merges only "
                       "(pool_over 'augmented'). Bold: best pooling per method.")
    return table


def _reference_rows(run: RunMetrics, setup: str, model: str, tasks: list[str]) -> list[list[Cell]]:
    ref = run.reference[model]
    if setup == "cl":
        zeroshot = {t: ref.cl[t].zeroshot if t in ref.cl else None for t in tasks}
        finetuned = {t: ref.cl[t].sequential_final if t in ref.cl else None for t in tasks}
        labels = (Label("zero-shot", "zeroshot"), Label("sequential fine-tuning (final)", "finetuned"))
    else:
        zeroshot = {t: ref.zeroshot.get(t) for t in tasks}
        finetuned = {t: ref.finetuned.get(t) for t in tasks}
        labels = (Label("zero-shot", "zeroshot"),
                  Label("fine-tuned on the task" if setup == "mtl" else "fine-tuned on the held-out task", "finetuned"))
    rows: list[list[Cell]] = []
    for label, values in zip(labels, (zeroshot, finetuned)):
        present = [v for v in values.values() if v is not None]
        avg = fmean(present) if len(present) == len(tasks) else None
        rows.append(["reference", label, None, *[values[t] for t in tasks], avg])
    return rows


def _variant_row(record: WeaveMetrics, tasks: list[str], label: Label, lam: float | None,
                 per_task: dict[str, float], avg: float) -> list[Cell]:
    return [method_cell(record.method), label, None if lam is None else f"{lam:g}",
            *[per_task.get(t) for t in tasks], avg]


def per_dataset_tables(run: RunMetrics) -> list[Table]:
    """Per setup and model (the paper's Tables 4-12): each task's accuracy for the reference models,
    and per method the recommended lam, the baseline lam and Weight Weaving (avg over A*)."""
    tables = []
    for setup in run.setups:
        for model in run.models:
            tasks: list[str] = []
            for method in run.methods:
                tasks.extend(t for t in run.get(model, setup, method).tasks if t not in tasks)
            table = Table(f"per_dataset_{setup}_{safe_name(model)}",
                          f"Per-task accuracy (%), {SETUP_ENTRIES[setup].label}, {model}",
                          ["Method", "Variant", "λ", *tasks, "Avg"], ["method", "variant", "lam", *tasks, "avg"])
            table.rows.extend(_reference_rows(run, setup, model, tasks))
            for method in run.methods:
                r = run.get(model, setup, method)
                if r.recommended_lam != r.baseline_lam:
                    table.rows.append(_variant_row(r, tasks, Label("recommended λ", "recommended"), r.recommended_lam, r.recommended,
                                                   r.recommended_avg))
                table.rows.append(_variant_row(r, tasks, Label("baseline", "baseline"), r.baseline_lam, r.baseline, r.baseline_avg))
                table.rows.append(_variant_row(r, tasks, Label("+ Weight Weaving", "weaving"), None, r.weaving_per_task("avg", "all"),
                                               r.weaving_avg("avg", "all")))
            first_method_row = 2
            _bold_column_max_from(table, first_method_row)
            table.notes.append("Reference rows: the zero-shot pretrained model and the fine-tuned model(s) "
                               + ("(sequential fine-tuning over the benchmark's splits, final checkpoint)"
                                  if setup == "cl" else "(individually fine-tuned on each task)")
                               + ". The recommended-λ row is omitted where it equals the baseline λ. "
                                 "Bold: best merged model per task. Avg: mean over the tasks (a reference Avg is "
                                 "left empty when a task has no reference value).")
            tables.append(table)
    return tables


def _bold_column_max_from(table: Table, first_row: int) -> None:
    for j in range(3, len(table.columns)):
        values = [row[j] for row in table.rows[first_row:] if isinstance(row[j], float)]
        if not values:
            continue
        best = round(max(values), 2)
        for i in range(first_row, len(table.rows)):
            value = table.rows[i][j]
            if isinstance(value, float) and round(value, 2) == best:
                table.bold.add((i, j))


def oracle_table(run: RunMetrics) -> Table:
    """Per model, setup and method: baseline, Weight Weaving and the privileged oracles.

    Oracle (single λ): the one lam of the search space with the best task-averaged accuracy.
    Oracle (per task): each task at its own best lam, then averaged (Section 5.4).
    """
    table = Table("oracle", "Cost of having no data: Weight Weaving vs the λ chosen on evaluation data (%)",
                  ["Model", "Setup", "Method", "Baseline", "Weight Weaving", "Oracle single λ", "best λ",
                   "Oracle per-task λ", "WW − oracle single", "WW − oracle per-task"],
                  ["model", "setup", "method", "baseline", "weaving", "oracle_single", "oracle_single_lam",
                   "oracle_per_task", "gap_single", "gap_per_task"])
    for model in run.models:
        for setup in run.setups:
            for method in run.methods:
                r = run.get(model, setup, method)
                lam, single = r.oracle_single()
                per_task = fmean(r.oracle_per_task().values())
                woven = r.weaving_avg("avg", "all")
                table.rows.append([model, Label(SETUP_SHORT[setup], setup), method_cell(method), r.baseline_avg, woven, single,
                                   f"{lam:g}", per_task, woven - single, woven - per_task])
    table.notes.append("Oracles select λ on the evaluation data (privileged information, not data-free). Weight "
                       "Weaving: pooling 'avg' over A*. A negative gap is what having no data costs.")
    return table


def _span(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def gain_verdict(low: float, high: float) -> Label:
    """A gain only when the whole interval is above 0, a loss when below, else neither."""
    if low > 0:
        return Label("gain", "gain")
    if high < 0:
        return Label("loss", "loss")
    return Label("within noise", "within_noise")


def intervals_table(run: RunMetrics) -> Table | None:
    """Per model, setup and method: baseline and Weight Weaving (avg over A*) with bootstrap intervals over
    the test images, and the paired interval of the gain; None when no file holds intervals."""
    records = [(model, setup, method, run.get(model, setup, method))
               for model in run.models for setup in run.setups for method in run.methods]
    records = [(m, s, me, r) for m, s, me, r in records if r.intervals is not None]
    if not records:
        return None
    level = {r.intervals.level for *_, r in records}
    resamples = {r.intervals.resamples for *_, r in records}
    percent = "/".join(f"{100 * v:g}%" for v in sorted(level))
    table = Table("intervals", f"Baseline vs Weight Weaving with {percent} bootstrap intervals over test images",
                  ["Model", "Setup", "Method", "Baseline", "interval", "Weight Weaving", "interval", "Δ", "Δ interval",
                   "verdict"],
                  ["model", "setup", "method", "baseline", "baseline_interval", "weaving", "weaving_interval",
                   "gain", "gain_interval", "verdict"])
    for model, setup, method, r in records:
        base, woven = r.intervals.baseline, r.intervals.weaving["avg"]["all"]
        gain = r.intervals.gain["avg"]["all"]
        table.rows.append([model, Label(SETUP_SHORT[setup], setup), method_cell(method), base.estimate,
                           _span(base.low, base.high), woven.estimate, _span(woven.low, woven.high), gain.estimate,
                           _span(gain.low, gain.high), gain_verdict(gain.low, gain.high)])
    table.notes.append(f"Percentile bootstrap over each task's test images ({'/'.join(map(str, sorted(resamples)))} "
                       "draws, weaving.stats); Δ is Weight Weaving (pooling 'avg' over A*) minus the baseline, paired "
                       "over the same images. A gain is called a gain only when its interval excludes 0. The "
                       "intervals cover test-image noise only, not the spread between fine-tuning seeds.")
    return table


def all_tables(run: RunMetrics) -> list[Table]:
    from weaving.report.beyond import beyond_lam_table

    optional = [t for t in (intervals_table(run), beyond_lam_table(run)) if t is not None]
    return [table1(run), table2(run), table3(run), oracle_table(run), *optional, *per_dataset_tables(run)]
