"""Regenerate README.md's Results tables from a report folder, or check that they are current.

    python scripts/readme_results.py                      # rewrite the blocks from reports/replicates
    python scripts/readme_results.py --check              # exit 1 naming each block that differs
    python scripts/readme_results.py --report R --readme README.md

Each table sits between two marker lines,

    <!-- results:<name>:begin -->
    | ... |
    <!-- results:<name>:end -->

and is rebuilt from the report's own files (never from the README's prose, which is written by hand):

- `start`: zero-shot and fine-tuned accuracy per dataset and their mean, from each seed's
  `metrics/<model>/seed<k>/reference.json` (read by `weaving.metrics.ReferenceMetrics`; mean ± one
  sample standard deviation over seeds by `weaving.report.seeds.seed_stats`), cross-checked against
  `summary.json`'s `zeroshot_avg` / `finetuned_avg`;
- `table2`: per method, the baseline (λ = 1), Weight Weaving (avg over A*) and the gain with its 95%
  interval over seeds, from `tables/seeds.csv`; a gain is bold when its interval is above 0
  (the report's gain rule, `weaving.report.seeds.counts_as_gain`, on the report's 2-decimal values);
- `claims`: the paper's claims (those whose `section` in `claims.json` is a section number of the
  paper; the families' rows name their family instead), verdict, in how many seeds each holds alone
  and the evidence text;
- `beyond_lam`: per method, the Avg column of `tables/beyond_lam.csv` per variant (λ × h: any
  `lam_x_<axes>` variant; `<method>_pooling`: that method as the pooling), best per row in bold.

Method and setup labels come from `weaving.catalogue`. Only the marked blocks change; the rest of the
README stays byte-identical, and it is written atomically (`weaving.atomic.atomic_write`).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import fmean

from weaving.atomic import atomic_write
from weaving.catalogue import SETUP_ENTRIES, method_label
from weaving.metrics import MetricsFileError, ReferenceMetrics
from weaving.report.load import RESERVED_MODEL_NAMES, replicate_folder
from weaving.report.seeds import seed_stats

ROOT = Path(__file__).resolve().parent.parent

DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "optdigits": "OptDigits", "ising": "Ising",
                  "cahn_hilliard": "Cahn-Hilliard", "textures": "textures"}
"""Display names of the embedded datasets (the dataset registry has no display label); others show their name."""

MARKER = re.compile(r"<!-- results:([A-Za-z0-9_-]+):(begin|end) -->")
PAPER_SECTION = re.compile(r"\d+(\.\d+)*")
"""A claim of the paper names the paper's section ("5.2"); a family's claim names its family ("TSV-C")."""
CONSISTENT_PP = 0.006
"""How far (points) a mean recomputed from the metrics may sit from summary.json's 2-decimal value."""


class ReadmeError(Exception):
    """A problem with the README's markers or the report folder; the message says which block or file."""


# ----------------------------------------------------------------------------------- report files


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReadmeError(f"{path}: missing (is this a report folder?)") from None
    except json.JSONDecodeError as error:
        raise ReadmeError(f"{path}: not JSON ({error})") from None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise ReadmeError(f"{path}: missing (is this a report folder?)") from None


def _number(row: dict[str, str], key: str, path: Path) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        raise ReadmeError(f"{path}: row {row} has no number in column {key!r}") from None


class Report:
    """The report folder's files the README's tables are read from."""

    def __init__(self, folder: Path, model: str | None = None) -> None:
        self.folder = Path(folder)
        self.summary = _read_json(self.folder / "summary.json")
        self.seeds: list[int] = list(self.summary.get("seeds") or [])
        models = [k for k in self.summary if k not in RESERVED_MODEL_NAMES]
        if model is None:
            if len(models) != 1:
                raise ReadmeError(f"{self.folder / 'summary.json'}: models {models}; name one with --model")
            model = models[0]
        if model not in models:
            raise ReadmeError(f"{self.folder / 'summary.json'}: no model {model!r} (has {models})")
        self.model = model

    def references(self) -> list[ReferenceMetrics]:
        """Each seed's reference.json (the run's own one when it has no replicate folders)."""
        metrics = self.folder / "metrics"
        paths = [replicate_folder(metrics, self.model, seed) / "reference.json" for seed in self.seeds] or \
                [replicate_folder(metrics, self.model) / "reference.json"]
        refs = []
        for path in paths:
            try:
                refs.append(ReferenceMetrics.read(path))
            except MetricsFileError as error:
                raise ReadmeError(str(error)) from None
        return refs


# ----------------------------------------------------------------------------------- formatting


def _pp(x: float) -> str:
    return f"{x:+.2f}"


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|\n"  # an empty cell is "| |"


def _rule(left: int, right: int) -> str:
    return _row(["---"] * left + ["---:"] * right)


def _dataset(name: str) -> str:
    return DATASET_LABELS.get(name, name)


# ----------------------------------------------------------------------------------- blocks


def block_start(report: Report) -> str:
    """Zero-shot and fine-tuned accuracy per dataset and their mean (1 decimal); ± std over seeds."""
    refs = report.references()
    tasks = list(refs[0].finetuned)
    for ref in refs:
        if list(ref.zeroshot) != tasks or list(ref.finetuned) != tasks:
            raise ReadmeError(f"the seeds' reference.json files of {report.model} name different datasets")
    text = _row(["", *map(_dataset, tasks), "mean"]) + _rule(1, len(tasks) + 1)
    summary = report.summary[report.model]
    for label, key, field in (("zero-shot", "zeroshot_avg", "zeroshot"), ("fine-tuned", "finetuned_avg", "finetuned")):
        per_task = [[getattr(ref, field)[t] for ref in refs] for t in tasks]
        per_seed_mean = [fmean(getattr(ref, field)[t] for t in tasks) for ref in refs]
        if abs(fmean(per_seed_mean) - summary[key]) > CONSISTENT_PP:
            raise ReadmeError(f"{report.folder}: the metrics' {field} mean {fmean(per_seed_mean):.4f} is not "
                              f"summary.json's {key} {summary[key]} (stale metrics/ or summary.json?)")
        varies = field == "finetuned" or any(len(set(values)) > 1 for values in per_task)
        cells = []
        for values in [*per_task, per_seed_mean]:
            stats = seed_stats(values)
            cells.append(f"{stats.mean:.1f}" if stats.std is None or not varies
                         else f"{stats.mean:.1f} ± {stats.std:.1f}")
        text += _row([label, *cells])
    return text


def block_table2(report: Report) -> str:
    """Per method: baseline (λ = 1), + Weight Weaving and the gain with its 95% interval over seeds."""
    path = report.folder / "tables" / "seeds.csv"
    rows = _read_csv(path)
    setups = list(dict.fromkeys(r["setup"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["setup"]): r for r in rows}
    columns = [SETUP_ENTRIES[s].short if s in SETUP_ENTRIES else s.capitalize() for s in setups]
    text = _row(["Method", "Variant", *columns]) + _rule(2, len(setups))

    def spread(row: dict[str, str], key: str) -> str:
        return f"{_number(row, key + '_mean', path):.2f} ± {_number(row, key + '_std', path):.2f}"

    def gain(row: dict[str, str]) -> str:
        low, high = _number(row, "gain_ci_low", path), _number(row, "gain_ci_high", path)
        shown = f"{_pp(_number(row, 'gain_mean', path))} [{_pp(low)}, {_pp(high)}]"
        return f"**{shown}**" if round(low, 2) > 0 else shown  # counts_as_gain on the report's 2 decimals

    for method in methods:
        found = [cell.get((method, s)) for s in setups]
        if any(r is None for r in found):
            raise ReadmeError(f"{path}: method {method!r} lacks a row for some of the setups {setups}")
        label = method_label(method)
        text += _row([label, "baseline (λ = 1)", *(spread(r, "baseline") for r in found)])
        text += _row([label, "+ Weight Weaving", *(spread(r, "weaving") for r in found)])
        text += _row([label, "gain, 95% interval", *(gain(r) for r in found)])
    return text


def paper_claims(claims: list[dict]) -> list[dict]:
    """The paper's claims among claims.json's rows: those whose `section` is a section number of the paper."""
    return [c for c in claims if PAPER_SECTION.fullmatch(str(c.get("section", "")))]


def block_claims(report: Report) -> str:
    """The paper's claims: statement, section, verdict on the means, seeds holding alone, evidence."""
    path = report.folder / "claims.json"
    claims = paper_claims(_read_json(path).get("claims", []))
    if not claims:
        raise ReadmeError(f"{path}: no claim of the paper (a claim whose section is a number such as 5.2)")
    n = len(report.seeds) or 1
    text = _row(["Claim", "Section", "Verdict on the means", "Holds alone in",
                 f"This run ({n} seed{'s' if n > 1 else ''})"]) + _rule(5, 0)
    for c in claims:
        seeds = c.get("seeds") or []
        holding = "—" if c.get("seeds_holding") is None else f"{c['seeds_holding']} of {len(seeds)} seeds"
        text += _row([c["statement"], c["section"], f"**{c['verdict']}**", holding,
                      c["evidence"].replace("|", "/")])
    return text


def variant_column(key: str) -> str | None:
    """The README column of a beyond_lam.csv variant key (None: a column of its own, see `block_beyond_lam`)."""
    if key.startswith("lam_x_"):
        return "λ × h"
    if key.endswith("_pooling"):
        return f"{method_label(key[:-len('_pooling')])} as pooling"
    return None


def block_beyond_lam(report: Report) -> str:
    """Per method: the Avg of the baseline, λ only and each variant beyond λ; best per row in bold."""
    path = report.folder / "tables" / "beyond_lam.csv"
    rows = _read_csv(path)
    fixed = {"baseline": "baseline (λ = 1)", "lam_only": "λ only"}
    columns = list(fixed.values())
    values: dict[str, dict[str, float]] = {}
    for r in rows:
        column = fixed.get(r["variant"]) or variant_column(r["variant"])
        if column is None:
            raise ReadmeError(f"{path}: unknown variant {r['variant']!r}")
        if column not in columns:
            columns.append(column)
        by_column = values.setdefault(r["method"], {})
        if column in by_column:
            raise ReadmeError(f"{path}: method {r['method']!r} has two variants in column {column!r}")
        by_column[column] = _number(r, "avg", path)
    spaces = [c for c in columns if c == "λ × h"]
    columns = columns[:2] + spaces + [c for c in columns[2:] if c not in spaces]  # the search spaces first
    text = _row(["Method", *columns]) + _rule(1, len(columns))
    for method, by_column in values.items():
        best = max(round(v, 2) for v in by_column.values())
        cells = []
        for column in columns:
            value = by_column.get(column)
            shown = "—" if value is None else f"{value:.2f}"
            cells.append(f"**{shown}**" if value is not None and round(value, 2) == best else shown)
        text += _row([method_label(method), *cells])
    return text


BLOCKS: dict[str, Callable[[Report], str]] = {
    "start": block_start,
    "table2": block_table2,
    "claims": block_claims,
    "beyond_lam": block_beyond_lam,
}


# ----------------------------------------------------------------------------------- markers


def marker(name: str, end: str) -> str:
    return f"<!-- results:{name}:{end} -->"


def find_blocks(text: str, names: list[str], where: str = "README") -> dict[str, tuple[int, int]]:
    """Per block name, the (start, end) offsets of its content: from after the begin marker's line to the
    start of the end marker. Raises `ReadmeError` naming the block for a missing, repeated, unbalanced,
    nested or unknown marker."""
    spans: dict[str, tuple[int, int]] = {}
    open_name: str | None = None
    open_at = 0
    for match in MARKER.finditer(text):
        name, kind = match.group(1), match.group(2)
        if name not in names:
            raise ReadmeError(f"{where}: marker {match.group(0)} names no known block (known: {', '.join(names)})")
        line_start = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.end())
        line_end = len(text) if line_end < 0 else line_end + 1
        if text[line_start:line_end].strip() != match.group(0):
            raise ReadmeError(f"{where}: block {name!r}: marker {match.group(0)} must stand alone on its line")
        if kind == "begin":
            if open_name is not None:
                raise ReadmeError(f"{where}: block {open_name!r} is not closed before {match.group(0)} "
                                  f"(missing {marker(open_name, 'end')})")
            if name in spans:
                raise ReadmeError(f"{where}: block {name!r} appears twice")
            open_name, open_at = name, line_end
        else:
            if open_name != name:
                raise ReadmeError(f"{where}: block {name!r}: {match.group(0)} without {marker(name, 'begin')} "
                                  "before it" + (f" (block {open_name!r} is open)" if open_name else ""))
            spans[name] = (open_at, line_start)
            open_name = None
    if open_name is not None:
        raise ReadmeError(f"{where}: block {open_name!r}: {marker(open_name, 'begin')} without "
                          f"{marker(open_name, 'end')} after it")
    missing = [n for n in names if n not in spans]
    if missing:
        raise ReadmeError(f"{where}: no block {', '.join(repr(n) for n in missing)} "
                          f"(expected {marker(missing[0], 'begin')} ... {marker(missing[0], 'end')})")
    return spans


def render(text: str, blocks: dict[str, str], where: str = "README") -> tuple[str, list[str]]:
    """`text` with every block's content replaced by `blocks[name]`, and the names of those that changed."""
    spans = find_blocks(text, list(blocks), where)
    changed = [name for name, (a, b) in spans.items() if text[a:b] != blocks[name]]
    out, last = [], 0
    for name, (a, b) in sorted(spans.items(), key=lambda item: item[1][0]):
        out += [text[last:a], blocks[name]]
        last = b
    out.append(text[last:])
    return "".join(out), changed


def generate(report: Report) -> dict[str, str]:
    return {name: build(report) for name, build in BLOCKS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "replicates", help="the report folder")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README to update")
    parser.add_argument("--model", default=None, help="the model of summary.json (default: its only one)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_bytes().decode("utf-8")
        blocks = generate(Report(args.report, args.model))
        new, changed = render(text, blocks, str(args.readme))
    except (ReadmeError, FileNotFoundError) as error:
        print(f"readme_results: {error}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(f"{args.readme}: block(s) differ from {args.report}: {', '.join(changed)} "
                  f"(run python scripts/readme_results.py)")
            spans = find_blocks(text, list(blocks), str(args.readme))
            for name in changed:
                a, b = spans[name]
                sys.stdout.writelines(difflib.unified_diff(text[a:b].splitlines(keepends=True),
                                                           blocks[name].splitlines(keepends=True),
                                                           f"README {name}", f"report {name}", n=0))
            return 1
        print(f"{args.readme}: every block matches {args.report}")
        return 0
    if changed:
        atomic_write(args.readme, lambda tmp: tmp.write_bytes(new.encode("utf-8")))
    print(f"{args.readme}: {'rewrote ' + ', '.join(changed) if changed else 'every block already matched'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
