"""The pipeline's metrics files, typed: one pydantic model per file, shared by the writers and the report.

Each stage script builds its model and writes it with `write(path)` (indented JSON through
`weaving.atomic.write_json`: keys in field order, numbers as given, no rounding here); the
report reads every file back with the same model (`read(path)` or `from_data(data, path)`).
The models check everything that one file can say about itself: accuracies are finite
numbers in [0, 100], every task of `tasks` is present in every per-task map (and no other),
sweeps are aligned with `lambdas`, names are registered in `weaving.catalogue`. What depends
on the run's configuration (the poolings and pool_over the report needs, the file's path
agreeing with its `model`, `setup` and `method`) is the reader's check (`weaving.report.load`).

Problems come back as `MetricsFileError` (an `InputError`), one line per problem, each naming
the file and the key: `describe(validation_error)` turns pydantic's errors into that style.
`contract_markdown()` renders the contract that `docs/contracts.md` states ("Metrics").

Torch-free: the report imports it without the training stack.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from weaving.atomic import write_json
from weaving.catalogue import METHOD_ENTRIES, POOL_OVER, POOLING_ENTRIES, SETUP_ENTRIES
from weaving.errors import InputError, choices


class MetricsFileError(InputError):
    """A metrics file that is missing, not JSON, or breaks its model: one line `<path>: <problem>` per problem."""

    def __init__(self, path: str | Path, problems: Sequence[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.path}: {p}" for p in self.problems))


# --- value types -------------------------------------------------------------------------------------------------

ACCURACY_RANGE = "a finite number in [0, 100]"
CONTRACT_ERROR = "metrics_contract"
"""The pydantic error type of a check the models make beyond single values (rendered as is by `describe`)."""
ENTRY_ERROR = "metrics_accuracy_entry"
"""The pydantic error type of a bad accuracy inside a map or list (grouped per map by `describe`)."""


def _one_error(error_type: str, expected: str) -> Callable[[Any, Callable[[Any], Any]], Any]:
    """A wrap validator that replaces every error of the inner type with one `error_type` error naming `expected`."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(error_type, "must be {expected}, got {got}",
                                      {"expected": expected, "got": _short(value)}) from None

    return validate


_Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
Accuracy = Annotated[_Percent, WrapValidator(_one_error("metrics_accuracy", ACCURACY_RANGE))]
"""An accuracy in percent: a finite number in [0, 100] (an integer is read as a float)."""
TaskAccuracy = Annotated[_Percent, WrapValidator(_one_error(ENTRY_ERROR, ACCURACY_RANGE))]
"""An accuracy inside a per-task map or list (its errors are reported per map)."""
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number (an integer is read as a float)."""
Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=0)]
Name = Annotated[str, Field(strict=True, min_length=1)]
Cosine = Annotated[float, Field(strict=True, ge=-1, le=1, allow_inf_nan=False)]
HParamValue = Annotated[
    Annotated[bool, Strict()] | Annotated[int, Strict()] | Annotated[float, Strict()],
    WrapValidator(_one_error("metrics_hparam", "a number or true/false")),
]
PerTask = dict[str, TaskAccuracy]
"""`{task: accuracy}` over exactly the file's `tasks`."""


# --- the file models -----------------------------------------------------------------------------------------------

def _keys(*names: str) -> dict[str, Any]:
    """Schema note for `contract_markdown`: what the keys of a (nested) map name, outermost first."""
    return {"keys": list(names)}


M = TypeVar("M", bound="MetricsFile")


class MetricsFile:
    """What every metrics model adds to pydantic: its place in the layout, `write` and `read`."""

    layout: ClassVar[str]
    """Where the file lives, relative to the project root (`docs/contracts.md`, "Metrics")."""
    writer: ClassVar[tuple[str, str]]
    """The stage that writes it and its script."""
    keys: ClassVar[tuple[str, ...]] = ()
    """For a file that is one object of named entries, what the keys name (`contract_markdown`)."""

    def to_json_data(self) -> Any:
        """The JSON document: keys in field order, values as stored."""
        return self.model_dump(mode="python")  # type: ignore[attr-defined]

    def write(self, path: str | Path) -> None:
        """Write the file atomically as indented JSON (`weaving.atomic.write_json`)."""
        write_json(path, self.to_json_data())

    @classmethod
    def from_data(cls: type[M], data: Any, path: str | Path) -> M:
        """Validate parsed JSON `data` read from `path`; `MetricsFileError` lists every problem."""
        try:
            return cls.model_validate(data)  # type: ignore[attr-defined]
        except ValidationError as error:
            raise MetricsFileError(path, describe(error, cls)) from None

    @classmethod
    def read(cls: type[M], path: str | Path) -> M:
        """Read and validate `path`; `MetricsFileError` if it is missing, not JSON or breaks the model."""
        return cls.from_data(read_json_object(path), path)


class _Record(MetricsFile, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TIE_TOLERANCE = 1e-9
"""Accuracies closer than this are ties (sums of the same numbers in another order differ by rounding)."""


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first of any tie."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best] + TIE_TOLERANCE:
            best = i
    return best


class BootstrapInterval(BaseModel):
    """A task-averaged accuracy (percent) or a gain (percentage points) with its percentile bootstrap
    interval over test images (`weaving.stats`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimate: Number = Field(description="the value on the test images as they are")
    low: Number = Field(description="the interval's lower end")
    high: Number = Field(description="the interval's upper end, at least `low`")

    @model_validator(mode="after")
    def _ordered(self) -> BootstrapInterval:
        if self.low > self.high:
            problems = _ContractProblems()
            problems.add(("low",), f"must be at most 'high' ({self.high}), got {self.low}")
            problems.raise_if_any(type(self).__name__)
        return self


class ExtensionIntervals(BaseModel):
    """Bootstrap intervals of one woven variant beyond lam (`WeaveExtension`), paired over the same test images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: BootstrapInterval = Field(description="the variant's task-averaged accuracy")
    gain: BootstrapInterval = Field(description="the variant minus the baseline, percentage points")
    gain_over_lam_only: BootstrapInterval | None = Field(
        description="the variant minus Weight Weaving over lam only (avg over A*), percentage points; null when "
        "that weave was not run")


class WeaveExtension(BaseModel):
    """Weight Weaving beyond lam (docs/merging.md): a weave over lam x the method's hyper-parameter axes
    `space` (avg pooling), or over lam with a merge method as the pooling, both over A*."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: dict[str, list[HParamValue]] = Field(description="the hyper-parameter axes swept with lam (empty: lam only)",
                                                json_schema_extra=_keys("hparam"))
    pooling: Name = Field(description="the pooling: `avg`, or the merge method used as the pooling")
    pooling_params: dict[str, HParamValue] = Field(description="the pooling method's hyper-parameters",
                                                   json_schema_extra=_keys("hparam"))
    accuracy: PerTask = Field(description="accuracy of the woven model, per task", json_schema_extra=_keys("task"))


class WeaveIntervals(BaseModel):
    """Bootstrap intervals of one weave stage's averages: the baseline, each woven model, and each woven
    model's gain over the baseline, paired over the same test images (`weaving.stats`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resamples: Count = Field(description="bootstrap draws (params `weave.bootstrap.resamples`)")
    level: Number = Field(gt=0, lt=1, description="the intervals' coverage, e.g. 0.95")
    seed: int = Field(description="the draws' seed")
    baseline: BootstrapInterval = Field(description="the baseline's task-averaged accuracy")
    weaving: dict[str, dict[str, BootstrapInterval]] = Field(
        description="`weaving[pooling][pool_over]`: the woven model's task-averaged accuracy",
        json_schema_extra=_keys("pooling", "pool_over"))
    gain: dict[str, dict[str, BootstrapInterval]] = Field(
        description="`gain[pooling][pool_over]`: woven minus baseline, percentage points",
        json_schema_extra=_keys("pooling", "pool_over"))
    extensions: dict[str, ExtensionIntervals] | None = Field(
        default=None, description="per variant of `WeaveMetrics.extensions`, its intervals (absent without variants)",
        json_schema_extra=_keys("variant"))


class WeaveMetrics(_Record):
    """One merge method in one setup: accuracies (percent) at the baseline and recommended lam, over
    the search space, and with Weight Weaving for each pooling and pool_over.

    Tasks are the evaluation units: MTL, every multi-task dataset (the merged model evaluated on
    each); DG, every held-out dataset (the merge of the others evaluated on it); CL, every
    benchmark (the merge of its sequential split vectors evaluated on the whole test set with a
    head over all its classes). Checks: `tasks` distinct; `baseline`, `recommended`, every
    `sweep` and every `weaving[pooling][pool_over]` map exactly the tasks of `tasks`; every
    `sweep[task]` has one accuracy per lam of `lambdas`; `setup`, `method`, the poolings and
    pool_over are registered names.
    """

    layout: ClassVar[str] = "metrics/<model>/seed<seed>/weave/<method>/<setup>.json"
    writer: ClassVar[tuple[str, str]] = ("weave@<model>-<method>-<seed>", "stages/weave.py")

    model: Name = Field(description="the model (params `models`); the file's path names it too")
    setup: Name = Field(description="the setup (`mtl`, `cl`, `dg`: `weaving.catalogue.SETUP_ENTRIES`)")
    method: Name = Field(description="the merge method (`weaving.catalogue.METHOD_ENTRIES`)")
    hparams: dict[str, HParamValue] = Field(description="the method's hyper-parameters as merged",
                                            json_schema_extra=_keys("hparam"))
    lambdas: list[Number] = Field(min_length=1, description="the search space of lam, in the order evaluated")
    recommended_lam: Number = Field(description="the lam its authors recommend")
    baseline_lam: Number = Field(description="the data-free baseline's lam (1)")
    tasks: list[Name] = Field(min_length=1, description="the evaluation units, in order")
    baseline: PerTask = Field(description="accuracy at `baseline_lam`, per task", json_schema_extra=_keys("task"))
    recommended: PerTask = Field(description="accuracy at `recommended_lam`, per task",
                                 json_schema_extra=_keys("task"))
    sweep: dict[str, list[TaskAccuracy]] = Field(
        description="per task, the accuracy at each lam of `lambdas` (`sweep[task][i]` at `lambdas[i]`)",
        json_schema_extra=_keys("task"))
    weaving: dict[str, dict[str, PerTask]] = Field(
        description="`weaving[pooling][pool_over][task]`: accuracy of the woven model",
        json_schema_extra=_keys("pooling", "pool_over", "task"))
    intervals: WeaveIntervals | None = Field(
        default=None, description="bootstrap intervals of the averages (absent when not computed)")
    extensions: dict[str, WeaveExtension] | None = Field(
        default=None, description="Weight Weaving beyond lam, by variant: `lam_x_<axes>` (lam x the method's "
        "params `space`) and `<method>_pooling` (params `weave.method_poolings`); absent when none ran",
        json_schema_extra=_keys("variant"))

    @model_validator(mode="after")
    def _consistent(self) -> WeaveMetrics:
        problems = _ContractProblems()
        problems.registered(("setup",), [self.setup], SETUP_ENTRIES, "setup")
        problems.registered(("method",), [self.method], METHOD_ENTRIES, "method")
        problems.distinct(("tasks",), self.tasks)
        problems.covers(("baseline",), self.baseline, self.tasks)
        problems.covers(("recommended",), self.recommended, self.tasks)
        problems.covers(("sweep",), self.sweep, self.tasks)
        for task, accuracies in self.sweep.items():
            if task in self.tasks and len(accuracies) != len(self.lambdas):
                problems.add(("sweep", task), f"must list {len(self.lambdas)} accuracies in [0, 100] "
                                              f"(one per lam in 'lambdas'), got {len(accuracies)}", subscript=True)
        problems.registered(("weaving",), self.weaving, POOLING_ENTRIES, "pooling")
        for pooling, by_pool_over in self.weaving.items():
            problems.registered(("weaving", pooling), by_pool_over, POOL_OVER, "pool_over")
            for pool_over, per_task in by_pool_over.items():
                if pooling in POOLING_ENTRIES and pool_over in POOL_OVER:
                    problems.covers(("weaving", pooling, pool_over), per_task, self.tasks)
        for name, variant in (self.extensions or {}).items():
            problems.covers(("extensions", name, "accuracy"), variant.accuracy, self.tasks)
        if self.intervals is not None:
            variants = sorted(self.extensions or {})
            if sorted(self.intervals.extensions or {}) != variants:
                problems.add(("intervals", "extensions"), f"must cover the variants of 'extensions' {variants}, "
                                                          f"got {sorted(self.intervals.extensions or {})}")
            woven = {(p, o) for p, by_over in self.weaving.items() for o in by_over}
            for part in ("weaving", "gain"):
                have = {(p, o) for p, by_over in getattr(self.intervals, part).items() for o in by_over}
                if have != woven:
                    problems.add(("intervals", part), f"must cover the pooling/pool_over pairs of 'weaving' "
                                                      f"{sorted(woven)}, got {sorted(have)}")
        problems.raise_if_any(type(self).__name__)
        return self

    def to_json_data(self) -> Any:
        """The JSON document; `intervals` left out when absent (files written before it existed read back the same)."""
        data = super().to_json_data()
        for optional in ("intervals", "extensions"):
            if data.get(optional) is None:
                data.pop(optional, None)
        if data.get("intervals") is not None and data["intervals"].get("extensions") is None:
            data["intervals"].pop("extensions", None)
        return data

    def extension_avg(self, name: str) -> float:
        """Task-averaged accuracy of the variant `name` of `extensions`."""
        return self.mean((self.extensions or {})[name].accuracy)

    def mean(self, per_task: dict[str, float]) -> float:
        """Mean over `tasks` of a per-task accuracy mapping."""
        return fmean(per_task[t] for t in self.tasks)

    @property
    def baseline_avg(self) -> float:
        return self.mean(self.baseline)

    @property
    def recommended_avg(self) -> float:
        return self.mean(self.recommended)

    def weaving_per_task(self, pooling: str = "avg", pool_over: str = "all") -> dict[str, float]:
        return self.weaving[pooling][pool_over]

    def weaving_avg(self, pooling: str = "avg", pool_over: str = "all") -> float:
        return self.mean(self.weaving[pooling][pool_over])

    def sweep_avg(self) -> list[float]:
        """Average accuracy over tasks at each lam of `lambdas`."""
        return [fmean(self.sweep[t][i] for t in self.tasks) for i in range(len(self.lambdas))]

    def best_lambda_per_task(self) -> dict[str, float]:
        """For each task, the lam of highest accuracy; ties go to the first in `lambdas` order."""
        return {t: self.lambdas[_argmax(self.sweep[t])] for t in self.tasks}

    def oracle_per_task(self) -> dict[str, float]:
        """For each task, its best accuracy over the sweep (privileged: chosen on evaluation data)."""
        return {t: max(self.sweep[t]) for t in self.tasks}

    def oracle_single(self) -> tuple[float, float]:
        """(lam, average accuracy) of the single lam with the best average over tasks; first on ties."""
        averages = self.sweep_avg()
        best = _argmax(averages)
        return self.lambdas[best], averages[best]


class ContinualReference(BaseModel):
    """The reference accuracies of one continual benchmark (its whole test set, all classes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zeroshot: Accuracy = Field(description="the pretrained model, zero-shot")
    sequential_final: Accuracy = Field(description="after sequential fine-tuning on its last split")


class ReferenceMetrics(_Record):
    """Zero-shot, fine-tuned and sequentially fine-tuned accuracies (percent), for the report to set beside
    the merged ones. A task absent from a map is a gap the report leaves empty."""

    layout: ClassVar[str] = "metrics/<model>/seed<seed>/reference.json"
    writer: ClassVar[tuple[str, str]] = ("taskvectors@<model>-<seed>", "stages/taskvectors.py")

    model: Name = Field(description="the model; the file's path names it too")
    zeroshot: dict[str, Accuracy] = Field(description="per multi-task dataset, the pretrained model's accuracy",
                                          json_schema_extra=_keys("task"))
    finetuned: dict[str, Accuracy] = Field(description="per multi-task dataset, its own fine-tuned model's accuracy",
                                           json_schema_extra=_keys("task"))
    cl: dict[str, ContinualReference] = Field(description="per continual benchmark", json_schema_extra=_keys("benchmark"))


class SimilarityMatrix(BaseModel):
    """Cosine similarity of flattened task vectors: `matrix[i][j]` between `labels[i]` and `labels[j]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[Name] = Field(min_length=1, description="the task vectors' names, distinct")
    matrix: list[list[Cosine]] = Field(description="n x n cosines in [-1, 1], n = len(labels)")

    @model_validator(mode="after")
    def _square(self) -> SimilarityMatrix:
        problems = _ContractProblems()
        problems.distinct(("labels",), self.labels)
        n = len(self.labels)
        if len(self.matrix) != n or any(len(row) != n for row in self.matrix):
            shape = f"{len(self.matrix)} row(s) of length(s) {sorted({len(row) for row in self.matrix})}"
            problems.add(("matrix",), f"must be a {n}x{n} list of numbers, one row and one column per label "
                                      f"in 'labels', got {shape}")
        problems.raise_if_any(type(self).__name__)
        return self


class SimilarityMetrics(_Record):
    """Cosine similarity of task vectors: individual fine-tuning against sequential fine-tuning
    (the paper's Figure 3)."""

    layout: ClassVar[str] = "metrics/<model>/seed<seed>/similarity.json"
    writer: ClassVar[tuple[str, str]] = ("taskvectors@<model>-<seed>", "stages/taskvectors.py")

    individual: SimilarityMatrix = Field(description="the task vectors fine-tuned on each multi-task dataset")
    sequential: dict[str, SimilarityMatrix] = Field(
        description="per continual benchmark, the task vectors of its sequential splits",
        json_schema_extra=_keys("benchmark"))


class FinetuneMetrics(_Record):
    """One fine-tuned image encoder: its test accuracy (percent) and cost."""

    layout: ClassVar[str] = "metrics/<model>/seed<seed>/finetune/<task>.json"
    writer: ClassVar[tuple[str, str]] = ("finetune@<model>-<task>-<seed>", "stages/finetune.py")

    task: Name = Field(description="the dataset fine-tuned on")
    accuracy: Accuracy = Field(description="test accuracy with the task's zero-shot head (rounded to 4 decimals)")
    train_images: Count = Field(description="images in the training split")
    seconds: Seconds = Field(description="wall-clock training time (rounded to 0.1 s)")


class SequentialSplit(BaseModel):
    """One split of a sequential fine-tuning: the classes it trains on and the accuracies after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Count = Field(description="its position, 0 first")
    classes: list[Count] = Field(min_length=1, description="the class indices it trains on")
    accuracy_split: Accuracy = Field(description="test accuracy on its own classes (rounded to 4 decimals)")
    accuracy_all: Accuracy = Field(description="test accuracy on all classes (rounded to 4 decimals)")


class SequentialMetrics(_Record):
    """Class-incremental sequential fine-tuning on one continual benchmark. Checks: `splits[i].split`
    is i; no class in two splits; `final_accuracy` is the last split's `accuracy_all`."""

    layout: ClassVar[str] = "metrics/<model>/seed<seed>/sequential/<benchmark>.json"
    writer: ClassVar[tuple[str, str]] = ("finetune_sequential@<model>-<benchmark>-<seed>", "stages/finetune_sequential.py")

    benchmark: Name = Field(description="the continual benchmark (params `cl_benchmarks`)")
    dataset: Name = Field(description="its dataset")
    splits: list[SequentialSplit] = Field(min_length=1, description="the splits in training order")
    final_accuracy: Accuracy = Field(description="test accuracy on all classes after the last split")

    @model_validator(mode="after")
    def _ordered(self) -> SequentialMetrics:
        problems = _ContractProblems()
        seen: set[int] = set()
        for i, split in enumerate(self.splits):
            if split.split != i:
                problems.add(("splits", i, "split"), f"must be {i} (the splits in order), got {split.split}")
            again = sorted(seen & set(split.classes))
            if again or len(set(split.classes)) != len(split.classes):
                problems.add(("splits", i, "classes"), f"repeats class(es) {again or split.classes}: "
                                                       "each class belongs to one split")
            seen |= set(split.classes)
        if self.final_accuracy != self.splits[-1].accuracy_all:
            problems.add(("final_accuracy",), f"is {self.final_accuracy} but the last split's 'accuracy_all' is "
                                              f"{self.splits[-1].accuracy_all}")
        problems.raise_if_any(type(self).__name__)
        return self


class ZeroshotMetrics(MetricsFile, RootModel[dict[str, Accuracy]]):
    """The pretrained model's zero-shot test accuracy (percent, rounded to 4 decimals) on every dataset
    of params `datasets`, with its zero-shot head."""

    model_config = ConfigDict(frozen=True)
    layout: ClassVar[str] = "metrics/<model>/zeroshot.json"
    writer: ClassVar[tuple[str, str]] = ("heads@<model>", "stages/heads.py")
    keys: ClassVar[tuple[str, ...]] = ("dataset",)


class PretrainMetrics(_Record):
    """Where theta_pre came from; for `source: pipeline`, the contrastive pretraining's log. Checks:
    the training keys are all present for `pipeline` and all absent for `openai`."""

    layout: ClassVar[str] = "metrics/<model>/pretrain.json"
    writer: ClassVar[tuple[str, str]] = ("pretrain@<model>", "stages/pretrain.py")
    TRAINING_KEYS: ClassVar[tuple[str, ...]] = ("losses", "steps", "seconds", "resumed_from", "images", "datasets")

    source: Literal["pipeline", "openai"] = Field(
        description="`pipeline`: trained by the stage; `openai`: open_clip's OpenAI weights")
    arch: Name = Field(description="the open_clip architecture")
    losses: list[Annotated[float, Strict()]] | None = Field(
        default=None, description="training loss per step run in this session (pipeline only)")
    steps: Count | None = Field(default=None, description="optimiser steps in all (pipeline only)")
    seconds: Seconds | None = Field(default=None, description="training time of this session (pipeline only)")
    resumed_from: Count | None = Field(default=None, description="the step it resumed from, 0 if none (pipeline only)")
    images: Count | None = Field(default=None, description="pretraining images over all datasets (pipeline only)")
    datasets: list[Name] | None = Field(default=None, description="the datasets pretrained on (pipeline only)")

    @model_validator(mode="after")
    def _keys_of_source(self) -> PretrainMetrics:
        given = [k for k in self.TRAINING_KEYS if getattr(self, k) is not None]
        problems = _ContractProblems()
        if self.source == "pipeline" and len(given) != len(self.TRAINING_KEYS):
            problems.add((), f"missing key(s) {[k for k in self.TRAINING_KEYS if k not in given]} "
                             "(source 'pipeline' logs its training)")
        if self.source == "openai" and given:
            problems.add((), f"key(s) {given} belong to source 'pipeline', not 'openai'")
        problems.raise_if_any(type(self).__name__)
        return self

    def to_json_data(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_none=True)


METRICS_FILES: tuple[type[MetricsFile], ...] = (
    PretrainMetrics, ZeroshotMetrics, FinetuneMetrics, SequentialMetrics, ReferenceMetrics, SimilarityMetrics,
    WeaveMetrics,
)
"""Every metrics file model, in pipeline order."""


# --- reading -------------------------------------------------------------------------------------------------------

def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; `MetricsFileError` if the file is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(path, ["file is missing"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetricsFileError(path, [f"not valid JSON ({error})"]) from None
    if not isinstance(data, dict):
        raise MetricsFileError(path, [f"top level must be a JSON object, got {type(data).__name__}"])
    return data


# --- problems: the models' own checks and pydantic's errors, in one style -----------------------------------------

Loc = tuple[str | int, ...]


class _ContractProblems:
    """Collects the problems a model validator finds, then raises them together as one ValidationError."""

    def __init__(self) -> None:
        self.details: list[InitErrorDetails] = []

    def add(self, loc: Loc, problem: str, subscript: bool = False) -> None:
        """`problem` about the key at `loc` (`subscript`: name the last key as `'parent'['key']`)."""
        error = PydanticCustomError(CONTRACT_ERROR, "{problem}", {"problem": problem, "subscript": subscript})
        self.details.append(InitErrorDetails(type=error, loc=loc, input=None))

    def distinct(self, loc: Loc, names: Sequence[str]) -> None:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            self.add(loc, f"repeats {repeated}: the names must be distinct")

    def covers(self, loc: Loc, per_task: Iterable[str], tasks: Sequence[str]) -> None:
        keys = list(per_task)
        missing = [t for t in tasks if t not in keys]
        if missing:
            self.add(loc, f"lacks task(s) {missing} (tasks: {list(tasks)})")
        extra = [k for k in keys if k not in tasks]
        if extra:
            self.add(loc, f"has task(s) {extra} not in 'tasks' ({list(tasks)})")

    def registered(self, loc: Loc, names: Iterable[str], valid: Iterable[str], kind: str) -> None:
        valid = list(valid)
        unknown = [n for n in names if n not in valid]
        if unknown:
            self.add(loc, f"names unregistered {kind}(s) {unknown}; registered: {choices(valid)}")

    def raise_if_any(self, title: str) -> None:
        if self.details:
            raise ValidationError.from_exception_data(title, self.details)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(loc: Loc) -> str:
    """`('weaving', 'avg', 'all')` -> `weaving.avg.all`; list positions as `[i]`: `splits[0].split`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _quoted(loc: Loc, subscript: bool = False) -> str:
    if subscript and len(loc) > 1:
        return f"'{_key(loc[:-1])}'[{loc[-1]!r}]"
    return f"'{_key(loc)}'"


def describe(error: ValidationError, model: type | None = None) -> list[str]:
    """One message per problem in `error`, each naming its key as `docs/contracts.md` spells it.

    Missing and unknown keys are grouped per object (`missing key(s) [...]`, `'individual' lacks
    key(s) [...]`); bad accuracies inside a map or list are grouped per map (`'baseline' has
    non-accuracy value(s) ... for ['mnist']`); the models' own checks read `'<key>' <problem>`;
    anything else `'<key>': <pydantic's message>, got <value>`.
    """
    groups: dict[tuple[str, Loc], list[Any]] = {}
    order: list[tuple[str, Loc] | str] = []

    def group(kind: str, parent: Loc, item: Any) -> None:
        if (kind, parent) not in groups:
            groups[(kind, parent)] = []
            order.append((kind, parent))
        groups[(kind, parent)].append(item)

    for problem in error.errors(include_url=False):
        loc: Loc = tuple(problem["loc"])
        kind = problem["type"]
        if kind in ("missing", "extra_forbidden", ENTRY_ERROR) and loc:
            group(kind, loc[:-1], loc[-1])
        elif kind == CONTRACT_ERROR:
            ctx = problem.get("ctx", {})
            order.append(f"{_quoted(loc, ctx.get('subscript', False))} {problem['msg']}" if loc else problem["msg"])
        elif kind.startswith("metrics_"):
            order.append(f"{_quoted(loc)} {problem['msg']}")
        else:
            message = problem["msg"][:1].lower() + problem["msg"][1:]
            where = f"{_quoted(loc)}: " if loc else ""
            order.append(f"{where}{message}, got {_short(problem['input'])}")

    lines = []
    for entry in order:
        if isinstance(entry, str):
            lines.append(entry)
            continue
        kind, parent = entry
        items = groups[entry]
        if kind == "missing":
            lines.append(f"missing key(s) {items}" if not parent else f"{_quoted(parent)} lacks key(s) {items}")
        elif kind == "extra_forbidden":
            allowed = f" (allowed: {list(model.model_fields)})" if not parent and hasattr(model, "model_fields") else ""
            lines.append(f"unknown key(s) {items}{allowed}" if not parent else f"{_quoted(parent)} has unknown key(s) {items}")
        else:
            where = f"{_quoted(parent)} has" if parent else "has"
            which = "at position(s)" if all(isinstance(i, int) for i in items) else "for"
            lines.append(f"{where} non-accuracy value(s) (need {ACCURACY_RANGE}) {which} {items}")
    return lines


# --- the contract, rendered for docs/contracts.md ------------------------------------------------------------------

def _type_text(schema: dict[str, Any], keys: Sequence[str] = ()) -> str:
    """A JSON schema as words: `list of number in [0, 100]`, `{task: number in [0, 100]}`, ..."""
    keys = list(schema.get("keys", keys))
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        parts = [_type_text(s, keys) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in schema["anyOf"])
        return " or ".join(parts) + (" (optional)" if nullable else "")
    if "enum" in schema or "const" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema.get("enum", [schema.get("const")]))
    kind = schema.get("type")
    if kind == "array":
        size = f" (at least {schema['minItems']})" if schema.get("minItems") else ""
        return f"list{size} of {_type_text(schema.get('items', {}), keys)}"
    if kind == "object":
        key, rest = (keys[0], keys[1:]) if keys else ("name", [])
        return f"{{{key}: {_type_text(schema.get('additionalProperties', {}), rest)}}}"
    text = {"number": "number", "integer": "integer", "string": "string", "boolean": "true/false"}.get(kind, "any")
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f" in [{low:g}, {high:g}]"
    elif low is not None:
        text += f" >= {low:g}"
    return text


def _fields_table(model: type[BaseModel]) -> list[str]:
    schema = model.model_json_schema()
    lines = ["| key | type | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type_text(schema['properties'][name])} | {field.description or ''} |")
    return lines


def _doc(model: type) -> str:
    return " ".join(line.strip() for line in (model.__doc__ or "").strip().splitlines() if line.strip())


def contract_markdown() -> str:
    """The "Metrics" section of `docs/contracts.md`, rendered from the models (a test keeps the two equal)."""
    nested = (WeaveIntervals, WeaveExtension, ExtensionIntervals, BootstrapInterval, ContinualReference, SimilarityMatrix,
              SequentialSplit)
    out = [
        "Every metrics file has one pydantic model in `src/weaving/metrics.py`: its stage writes it with",
        "`Model(...).write(path)` (indented JSON, keys in the order below) and the report reads it with",
        "`Model.read(path)`, which checks the constraints below and names every problem with its file and",
        "key. Accuracies are percent, finite numbers in [0, 100]. The report also checks what depends on",
        "the run: the file's `model`, `setup` and `method` agree with its path, and `weaving` has every",
        "configured pooling and pool_over.",
    ]
    for model in METRICS_FILES:
        stage, script = model.writer
        out += ["", f"### `{model.__name__}`: `{model.layout}`", "",
                f"Written by the stage `{stage}` (`{script}`). {_doc(model)}", ""]
        if issubclass(model, RootModel):
            out.append(f"The whole file: {_type_text(model.model_json_schema(), model.keys)}.")
        else:
            out += _fields_table(model)
    for model in nested:
        out += ["", f"### `{model.__name__}` (inside the files above)", "", _doc(model), "", *_fields_table(model)]
    return "\n".join(out) + "\n"



# --- the algorithm families' metrics files -------------------------------------------------------------------------
# A family's models live in `weaving.metrics_<family>`, which imports the types above, so they cannot sit in
# METRICS_FILES without an import cycle: they are registered here by module and model name, imported on use.

FAMILY_METRICS_FILES: dict[str, tuple[str, ...]] = {}
"""`weaving.metrics_<family>` -> the names of its file models (`family_metrics_files()` imports them)."""
FAMILY_METRICS_FILES["weaving.metrics_tsv"] = ("CompressMetrics", "MassMetrics")  # TSV-C and MASS (docs/tsv.md)
FAMILY_METRICS_FILES["weaving.metrics_align"] = ("AlignMetrics",)  # C2M3 (issue 13)
FAMILY_METRICS_FILES["weaving.metrics_search"] = ("Merge3Metrics",)  # MERGE3 (docs/search.md)


def family_metrics_files() -> tuple[type[MetricsFile], ...]:
    """The registered families' file models, in registration order."""
    import importlib

    return tuple(getattr(importlib.import_module(module), name)
                 for module, names in FAMILY_METRICS_FILES.items() for name in names)


def family_contract_markdown() -> str:
    """The families' part of the "Metrics" section of `docs/contracts.md`: each registered file model and the
    records nested in it (a test keeps docs/contracts.md equal)."""
    out = ["The algorithm families' metrics files (`weaving.metrics_<family>`, registered in",
           "`weaving.metrics.FAMILY_METRICS_FILES`), read and checked the same way."]
    for model in family_metrics_files():
        stage, script = model.writer
        out += ["", f"### `{model.__name__}`: `{model.layout}`", "",
                f"Written by the stage `{stage}` (`{script}`). {_doc(model)}", "", *_fields_table(model)]
        nested, todo = [], [model]
        while todo:
            for field in todo.pop(0).model_fields.values():
                for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
                    for inner in (candidate, *getattr(candidate, "__args__", ())):
                        if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in nested \
                                and inner is not model:
                            nested.append(inner)
                            todo.append(inner)
        for inner in nested:
            out += ["", f"#### `{inner.__name__}` (inside `{model.__name__}`)", "", _doc(inner), "", *_fields_table(inner)]
    return "\n".join(out) + "\n"
