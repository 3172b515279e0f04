"""The metrics files of the TSV stages (`compress@<model>`, `mass@<model>`), typed like `weaving.metrics`.

`CompressMetrics` (`metrics/<model>/tsv/compress.json`): TSV-C accuracy with the task known per
rank fraction, normalised by the fine-tuned accuracy, and storage
(`weaving.compress.experiment.run_compression_experiment`). `MassMetrics`
(`metrics/<model>/tsv/mass.json`): fine-tuned, TSV-Merge, TSV-C (task known), MASS, MASS with
the oracle head and MASS top-1 per task, routing statistics, storage and the threshold and layer
sweeps (`weaving.routing.experiment.run_mass_experiment`). Checks: every per-task map covers
exactly `tasks`; the sweep's `1/T` record is the `default` one; headlines agree with the records
they summarise. Problems come back as `MetricsFileError` naming the file and the key. Torch-free.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field, model_validator

from weaving.metrics import Accuracy, Count, Name, Number, PerTask, _ContractProblems, _Record

__all__ = ["MASS_VARIANTS", "CompressMetrics", "CompressRecord", "MassMetrics", "Storage"]

MASS_VARIANTS = ("finetuned", "tsv_merge", "tsvc_task_known", "mass", "mass_oracle_head", "mass_top1")
"""The evaluated variants of `MassMetrics.accuracy`, in table order."""

_CLOSE = 1e-9


class _TsvRecord(_Record):
    def to_json_data(self) -> dict:
        """The JSON document; optional keys left out when absent (`mass_ratio_to_one_model` in compress.json)."""
        return self.model_dump(mode="python", exclude_none=True)


class Storage(_Record):
    """Stored numbers (and bytes) of the `T` compressed task vectors against one model (`one_model_*`:
    one uncompressed task vector's floating parameters) and against `T` models."""

    num_tasks: Count
    stored_numbers: Count
    stored_bytes: Count
    one_model_numbers: Count
    one_model_bytes: Count
    ratio_to_one_model: Number = Field(description="stored_numbers / one_model_numbers")
    ratio_to_all_models: Number = Field(description="stored_numbers / (num_tasks * one_model_numbers)")
    mass_ratio_to_one_model: Number | None = Field(
        default=None, description="MASS's storage, theta_pre plus the compressed set, over one model (mass.json only)")


class CompressRecord(_Record):
    """TSV-C at one rank fraction: per-task accuracy with the task known (%), normalised (% of fine-tuned)."""

    rank_fraction: Number = Field(gt=0, le=1)
    is_default: bool = Field(description="true for f = 1/T")
    accuracy: PerTask
    normalized: dict[str, Number]
    mean: Accuracy
    normalized_mean: Number
    storage: Storage
    rank_range: list[Count] = Field(min_length=2, max_length=2, description="[smallest, largest] kept rank")


class CompressHeadline(_Record):
    normalized_mean: Number = Field(description="TSV-C at 1/T: mean over tasks of accuracy / fine-tuned (%)")
    storage_ratio: Number = Field(description="stored numbers of the T compressed vectors / one model's")


class CompressMetrics(_TsvRecord):
    """TSV-C of the multi-task suite's task vectors (`weaving.compress.experiment`)."""

    layout: ClassVar[str] = "metrics/<model>/tsv/compress.json"
    writer: ClassVar[tuple[str, str]] = ("compress@<model>", "stages/compress.py")

    model: Name
    tasks: list[Name] = Field(min_length=1)
    num_tasks: Count
    default_rank_fraction: Number = Field(gt=0, le=1, description="1/T")
    finetuned: PerTask = Field(description="each task's fine-tuned accuracy (the fine-tune stage's)")
    finetuned_mean: Accuracy
    sweep: list[CompressRecord] = Field(min_length=1, description="one record per rank fraction, ascending")
    default: CompressRecord = Field(description="the sweep's record at 1/T")
    headline: CompressHeadline

    @model_validator(mode="after")
    def _consistent(self) -> CompressMetrics:
        problems = _ContractProblems()
        problems.distinct(("tasks",), self.tasks)
        if self.num_tasks != len(self.tasks):
            problems.add(("num_tasks",), f"is {self.num_tasks} but 'tasks' lists {len(self.tasks)}")
        if not math.isclose(self.default_rank_fraction, 1 / max(len(self.tasks), 1), rel_tol=1e-9):
            problems.add(("default_rank_fraction",), f"must be 1/T = 1/{len(self.tasks)}, got {self.default_rank_fraction}")
        problems.covers(("finetuned",), self.finetuned, self.tasks)
        for loc, record in [*((("sweep", i), r) for i, r in enumerate(self.sweep)), (("default",), self.default)]:
            problems.covers((*loc, "accuracy"), record.accuracy, self.tasks)
            problems.covers((*loc, "normalized"), record.normalized, self.tasks)
        fractions = [r.rank_fraction for r in self.sweep]
        if fractions != sorted(set(fractions)):
            problems.add(("sweep",), f"rank fractions must be distinct and ascending, got {fractions}")
        defaults = [r for r in self.sweep if r.is_default]
        if len(defaults) != 1:
            problems.add(("sweep",), f"must hold exactly one record with is_default true (f = 1/T), got {len(defaults)}")
        elif defaults[0] != self.default:
            problems.add(("default",), "differs from the sweep's is_default record")
        if not math.isclose(self.headline.normalized_mean, self.default.normalized_mean, abs_tol=_CLOSE) or \
                not math.isclose(self.headline.storage_ratio, self.default.storage.ratio_to_one_model, abs_tol=_CLOSE):
            problems.add(("headline",), "must repeat the default record's normalized_mean and storage ratio")
        problems.raise_if_any(type(self).__name__)
        return self


class MassOptions(_Record):
    layer: Count = Field(description="the hooked block L")
    depth: Count = Field(description="the encoder's blocks")
    threshold: Number = Field(ge=0, le=1)
    max_tasks: Count
    temperature: Number
    rank_fraction: Number = Field(gt=0, le=1, description="of the compressed task vectors")


class MassRouting(_Record):
    """Routing at the default options: per task argmax accuracy, survival (true task selected), head accuracy
    (the answering head is the true task's), mean selected-set size; confusion (true -> argmax counts)."""

    accuracy: PerTask
    survival: PerTask
    head_accuracy: PerTask
    mean_set_size: dict[str, Number]
    confusion: dict[str, dict[str, Count]]
    set_size_histogram: dict[str, Count] = Field(description="selected-set size -> images")
    selected_sets: dict[str, Count] = Field(description="'task+task' -> images")
    passes_per_image: Number
    routing_pass_fraction: Number = Field(description="(L + 1) / depth: the routing pass stops after block L")
    block_passes_per_image: Number
    model_builds: Count
    mean_accuracy: Accuracy
    mean_survival: Accuracy
    mean_head_accuracy: Accuracy


class RuleSummary(_Record):
    """One selection rule (threshold, layer) over the suite: means over tasks (%), MASS accuracy per task."""

    mean: Accuracy
    oracle_head_mean: Accuracy
    survival: Accuracy
    head_accuracy: Accuracy
    mean_set_size: Number
    accuracy: PerTask
    normalized_mean: Number


class ThresholdRecord(RuleSummary):
    threshold: Number = Field(ge=0, le=1)


class LayerRecord(RuleSummary):
    layer: Count
    routing_accuracy: Accuracy


class MassSweeps(_Record):
    threshold: list[ThresholdRecord] = Field(min_length=1)
    layer: list[LayerRecord] = Field(min_length=1)


class MassHeadline(_Record):
    mass_mean: Accuracy
    tsv_merge_mean: Accuracy
    mass_top1_mean: Accuracy
    storage_ratio: Number = Field(description="MASS's storage (theta_pre + compressed set) over one model")
    normalized_mean: Number = Field(description="MASS: mean over tasks of accuracy / fine-tuned (%)")
    tsv_merge_normalized_mean: Number
    top1_normalized_mean: Number


class MassMetrics(_TsvRecord):
    """MASS routing over the TSV-C compressed suite (`weaving.routing.experiment`)."""

    layout: ClassVar[str] = "metrics/<model>/tsv/mass.json"
    writer: ClassVar[tuple[str, str]] = ("mass@<model>", "stages/mass.py")

    model: Name
    tasks: list[Name] = Field(min_length=1)
    options: MassOptions
    accuracy: dict[str, PerTask] = Field(description=f"variant ({', '.join(MASS_VARIANTS)}) -> task -> %")
    mean: dict[str, Accuracy]
    normalized: dict[str, dict[str, Number]]
    normalized_mean: dict[str, Number]
    routing: MassRouting
    storage: Storage
    sweeps: MassSweeps
    headline: MassHeadline

    @model_validator(mode="after")
    def _consistent(self) -> MassMetrics:
        problems = _ContractProblems()
        problems.distinct(("tasks",), self.tasks)
        for key in ("accuracy", "mean", "normalized", "normalized_mean"):
            variants = list(getattr(self, key))
            if variants != list(MASS_VARIANTS):
                problems.add((key,), f"must hold the variants {list(MASS_VARIANTS)} in that order, got {variants}")
        for variant, per_task in self.accuracy.items():
            problems.covers(("accuracy", variant), per_task, self.tasks)
        for variant, per_task in self.normalized.items():
            problems.covers(("normalized", variant), per_task, self.tasks)
        for key in ("accuracy", "survival", "head_accuracy", "mean_set_size", "confusion"):
            problems.covers(("routing", key), getattr(self.routing, key), self.tasks)
        if not 0 <= self.options.layer < self.options.depth:
            problems.add(("options", "layer"), f"must be a block in [0, {self.options.depth - 1}], got {self.options.layer}")
        for i, record in enumerate(self.sweeps.threshold):
            problems.covers(("sweeps", "threshold", i, "accuracy"), record.accuracy, self.tasks)
        for i, record in enumerate(self.sweeps.layer):
            problems.covers(("sweeps", "layer", i, "accuracy"), record.accuracy, self.tasks)
        if "mass" in self.normalized_mean and not math.isclose(self.headline.normalized_mean,
                                                               self.normalized_mean["mass"], abs_tol=_CLOSE):
            problems.add(("headline", "normalized_mean"), "must be normalized_mean.mass")
        problems.raise_if_any(type(self).__name__)
        return self
