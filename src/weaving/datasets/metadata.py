"""Class names and prompt templates, kept as JSON data files in ``metadata/<name>.json``.

A file holds ``classnames`` (label order), ``templates`` (``{}`` marks the class name),
``provenance``, optionally ``archive_names`` (the names as the source archive spells them,
in label order, for cross-checking) and optionally a ``paper`` block overriding any of
these for the paper profile (e.g. MNIST's task-vector prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from weaving.datasets.base import DatasetError

METADATA_DIR = Path(__file__).resolve().parent / "metadata"


@dataclass(frozen=True)
class ClassMetadata:
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    archive_names: tuple[str, ...] | None
    provenance: str
    extra: dict


@cache
def _read(name: str) -> dict:
    path = METADATA_DIR / f"{name}.json"
    if not path.is_file():
        raise DatasetError(f"{name}: no metadata file {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_metadata(name: str, profile: str = "embedded") -> ClassMetadata:
    """The class names and templates of ``name`` for ``profile`` ("embedded" or "paper")."""
    data = dict(_read(name))
    if profile == "paper" and "paper" in data:
        data.update(data["paper"])
    classnames = tuple(data["classnames"])
    templates = tuple(data["templates"])
    if not classnames or len(set(classnames)) != len(classnames):
        raise DatasetError(f"{name}: metadata classnames must be non-empty and distinct")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise DatasetError(f"{name}: every template needs exactly one '{{}}'; bad: {bad[:3]}")
    archive = data.get("archive_names")
    extra = {k: v for k, v in data.items()
             if k not in ("name", "classnames", "templates", "archive_names", "provenance", "paper")}
    return ClassMetadata(classnames, templates, tuple(archive) if archive is not None else None,
                         str(data.get("provenance", "")), extra)
