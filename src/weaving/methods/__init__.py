"""The registry of merge methods: `METHODS[name]`, built from `weaving.catalogue.METHOD_ENTRIES`.

Adding a method: one module exposing `METHOD` (a `PerTensorMethod` or `ModelWideMethod`)
and one `MethodEntry` line in `weaving/catalogue.py`.
"""

from __future__ import annotations

import importlib

from weaving.catalogue import METHOD_ENTRIES
from weaving.methods.base import MergeMethod, MethodRun, ModelLayout, ModelWideMethod, PerTensorMethod

METHODS: dict[str, MergeMethod] = {}


def refresh() -> None:
    """Rebuild `METHODS` in place from the catalogue (each entry's `module.METHOD`)."""
    METHODS.clear()
    for name, entry in METHOD_ENTRIES.items():
        method = importlib.import_module(entry.module).METHOD
        if method.name != name:
            raise AssertionError(f"catalogue entry {name!r}: {entry.module}.METHOD is named {method.name!r}")
        METHODS[name] = method


refresh()

__all__ = ["METHODS", "MergeMethod", "MethodRun", "ModelLayout", "ModelWideMethod", "PerTensorMethod", "refresh"]
