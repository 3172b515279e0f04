"""The report sections of the thesis's algorithm families, one module each, in one registry.

A family's module (`weaving.report.<family>`) exposes

    def section(metrics_dir: Path, models: list[str], seed: int | None = None) -> Section

which reads and validates that family's metrics files (naming the file on bad content; where they
are per replicate, those of replicate `seed`: `weaving.report.load.replicate_folder`) and returns its tables, figures, captions and claims-check rows. `build_report` puts every
section's tables and figures beside the paper's and appends its claims to `claims.json`.
Adding a family's report is one module and one line in `SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weaving.report.claims import Claim
from weaving.report.tables import Table

SECTIONS: dict[str, str] = {
    "tsv": "tsv",
    "align": "align",  # C2M3 (issue 13)
    "search": "search",  # MERGE3 (docs/search.md, "Pipeline")
}
"""Section name -> module under `weaving.report` that defines `section(metrics_dir, models, seed)`."""


@dataclass
class Section:
    """One family's part of the report: tables, figures (PNG bytes by file name), the figures'
    captions, claims-check rows and introductory paragraphs for index.html."""

    title: str
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def load_sections(names: Iterable[str], metrics_dir: Path, models: list[str], seed: int | None = None) -> list[Section]:
    """The sections `names` (keys of `SECTIONS`, in that order) built from `metrics_dir` (replicate `seed`)."""
    sections = []
    for name in names:
        if name not in SECTIONS:
            raise ValueError(f"unknown report section {name!r}; known: {', '.join(SECTIONS) or 'none'}")
        module = importlib.import_module(f"weaving.report.{SECTIONS[name]}")
        sections.append(module.section(Path(metrics_dir), list(models), seed=seed))
    return sections
