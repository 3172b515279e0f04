"""The registry of merge methods: `METHODS[name]`.

Adding a method: one module exposing `METHOD` (a `PerTensorMethod` or `ModelWideMethod`)
and one line in `_REGISTERED` below.
"""

from __future__ import annotations

from weaving.methods import breadcrumbs, dare, iso_c, magmax, pcb, task_arithmetic, ties, tsv
from weaving.methods.base import MergeMethod, MethodRun, ModelLayout, ModelWideMethod, PerTensorMethod

_REGISTERED: tuple[MergeMethod, ...] = (
    task_arithmetic.METHOD,
    dare.METHOD,
    ties.METHOD,
    breadcrumbs.METHOD,
    magmax.METHOD,
    pcb.METHOD,
    tsv.METHOD,
    iso_c.METHOD,
)

METHODS: dict[str, MergeMethod] = {method.name: method for method in _REGISTERED}

__all__ = ["METHODS", "MergeMethod", "MethodRun", "ModelLayout", "ModelWideMethod", "PerTensorMethod"]
