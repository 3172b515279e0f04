"""The one registry of every kind the project names: methods, poolings, setups.

Torch-free, so the params schema, the report and the command line read names, labels,
references and defaults from here without importing the computations. The computations
live in the modules each entry names and are loaded on first use (`weaving.methods.METHODS`,
`weaving.poolings.POOLINGS`).

Adding a merge method: one module under `weaving/methods/` exposing `METHOD`, and one
`MethodEntry` line in `METHOD_ENTRIES`. Adding a pooling: its functions in
`weaving/poolings.py` (or a module of its own) and one `PoolingEntry` line. Adding a setup:
a scenario builder in `weaving/experiment.py` and one `SetupEntry` line. Datasets have their
own registry, `weaving.datasets.DATASETS`. Tests and plugins may add entries at run time with
`register_method`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodEntry:
    """A merge method as the rest of the project knows it.

    `module` holds its computation (`module.METHOD`, a `weaving.methods.MergeMethod` whose
    `name` equals `name`); `recommended_lam` is the scaling its authors recommend (the
    pipeline's 'recommended' row); `linear_in_lam` promises `f(taus, lam) = lam * f(taus, 1)`,
    which lets weaving compute one merge per search space (a method without it is woven by
    materialising one merge per lam).
    """

    name: str
    label: str
    module: str
    reference: str
    recommended_lam: float = 1.0
    linear_in_lam: bool = True


@dataclass(frozen=True)
class PoolingEntry:
    """A pooling function of Weight Weaving: how the members are reduced to one vector."""

    name: str
    label: str
    summary: str
    colour: str
    """Plot colour (Okabe-Ito palette) used by every figure."""


@dataclass(frozen=True)
class SetupEntry:
    """An evaluation setup of the paper: which task vectors are merged, how scenarios are built.

    `task_vectors` is `"finetuned"` (one per multi-task dataset) or `"sequential"` (one per
    split of each continual benchmark); `scenarios` names the builder in `weaving.experiment`.
    """

    name: str
    label: str
    short: str
    task_vectors: Literal["finetuned", "sequential"]
    scenarios: str


METHOD_ENTRIES: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry("task_arithmetic", "Task Arithmetic", "weaving.methods.task_arithmetic",
                    "Ilharco et al., ICLR 2023", recommended_lam=0.3),
        MethodEntry("dare", "DARE", "weaving.methods.dare", "Yu et al., ICML 2024", recommended_lam=0.3),
        MethodEntry("ties", "TIES", "weaving.methods.ties", "Yadav et al., NeurIPS 2023", recommended_lam=1.0),
        MethodEntry("breadcrumbs", "Breadcrumbs", "weaving.methods.breadcrumbs", "Davari & Belilovsky, ECCV 2024",
                    recommended_lam=0.3),
        MethodEntry("magmax", "MagMax", "weaving.methods.magmax", "Marczak et al., ECCV 2024", recommended_lam=0.5),
        MethodEntry("pcb", "PCB", "weaving.methods.pcb", "Du et al., NeurIPS 2024", recommended_lam=1.0),
        MethodEntry("tsv", "TSV", "weaving.methods.tsv", "Gargiulo et al., CVPR 2025", recommended_lam=1.0),
        MethodEntry("iso_c", "ISO-C", "weaving.methods.iso_c", "Marczak et al., ICML 2025", recommended_lam=1.0),
    )
}

POOLING_ENTRIES: dict[str, PoolingEntry] = {
    entry.name: entry
    for entry in (
        PoolingEntry("avg", "average", "arithmetic mean of the members", "#0072B2"),
        PoolingEntry("random", "random selection", "per element, a member drawn uniformly at random", "#009E73"),
        PoolingEntry("magmax", "MagMax", "per element, the member of largest magnitude (later wins ties)", "#CC79A7"),
    )
}

POOL_OVER: tuple[str, ...] = ("all", "augmented")
"""`all`: the task vectors and the scaled merges (the paper's A*); `augmented`: the scaled merges (A)."""

SETUP_ENTRIES: dict[str, SetupEntry] = {
    entry.name: entry
    for entry in (
        SetupEntry("mtl", "multi-task learning", "MTL", "finetuned", "multitask_scenarios"),
        SetupEntry("cl", "continual learning", "CL", "sequential", "continual_scenarios"),
        SetupEntry("dg", "domain generalisation", "DG", "finetuned", "leave_one_out_scenarios"),
    )
}


def method_label(name: str) -> str:
    """The display label of a method (its name when it is not registered)."""
    entry = METHOD_ENTRIES.get(name)
    return entry.label if entry is not None else name


def register_method(entry: MethodEntry) -> None:
    """Add (or replace) a method entry at run time; `weaving.methods.METHODS` picks it up."""
    METHOD_ENTRIES[entry.name] = entry
    from weaving import methods  # noqa: PLC0415 (the computations load only when asked)

    methods.refresh()


def unregister_method(name: str) -> None:
    """Remove a method entry added by `register_method`."""
    METHOD_ENTRIES.pop(name, None)
    from weaving import methods  # noqa: PLC0415

    methods.refresh()
