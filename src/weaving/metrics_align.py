"""The metrics file of the C2M3 alignment stage (`align@<dataset>-<arch>`), typed like `weaving.metrics`.

`AlignMetrics` (`metrics/align/<dataset>-<arch>.json`): what
`weaving.align.experiment.run_alignment_experiment` returns, with the dataset, the training recipe
and the numbers of images: per subset of models and merger (naive, pairwise, MergeMany, C2M3) the
merge's test accuracy and loss against its endpoints' mean, run time, C2M3's Frank-Wolfe trace,
the cycle error of the merger's pairwise maps (subsets of 3 models or more), the merge after
REPAIR (when `repair`); per subset size, each merger's mean over the subsets; the test loss and
accuracy along the linear path between models 0 and 1, unaligned and after C2M3. Checks beyond
single values: mergers are registered names, subsets are distinct model indices of the stated
size, `summary` covers the subset sizes, REPAIR and cycle errors are present exactly where they
are due, the path's curves have one value per lambda. Problems come back as `MetricsFileError`
naming the file and the key. Torch-free.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from weaving.metrics import Accuracy, Count, Name, Number, Seconds, _ContractProblems, _Record

__all__ = ["ALIGN_MERGERS", "AlignMetrics", "MergeRecord", "MergeSummary", "SubsetRecord"]

ALIGN_MERGERS = ("naive", "pairwise", "mergemany", "c2m3")
"""As `weaving.align.merge.MERGERS` (a test keeps them equal; that module imports torch)."""


class _AlignRecord(_Record):
    def to_json_data(self) -> dict:
        """The JSON document; optional keys left out when absent (as the experiment writes it)."""
        return self.model_dump(mode="python", exclude_none=True)


class Score(_Record):
    """Test accuracy (%) and mean cross-entropy of one model."""

    accuracy: Accuracy
    loss: Number = Field(ge=0)


class RepairScore(Score):
    seconds: Seconds = Field(description="REPAIR's time (statistics of every conv, the rescaling, the evaluation)")


class CycleError(_Record):
    """`||P_ac P_cb P_ba - I||_F` over every triple of models (`weaving.align.permute.cycle_error`)."""

    max: Number = Field(ge=0)
    mean: Number = Field(ge=0)
    max_fraction_moved: Number = Field(ge=0, le=1, description="largest share of units a cycle does not bring back")
    triples: Count


class MergeRecord(_Record):
    """One merger on one subset: the merge's test accuracy and loss, and how it got there."""

    accuracy: Accuracy
    loss: Number = Field(ge=0)
    seconds: Seconds = Field(description="the alignment's time (permutations only)")
    rounds: Count | None = Field(default=None, description="MergeMany's rounds")
    iterations: Count | None = Field(default=None, description="C2M3's Frank-Wolfe iterations")
    objective_trace: list[Number] | None = Field(default=None, description="C2M3's objective after each iteration")
    objective_rounded: Number | None = Field(default=None, description="C2M3's objective at the rounded permutations")
    step_sizes: list[Number] | None = Field(default=None, description="C2M3's step size of each iteration")
    cycle_error: CycleError | None = Field(default=None, description="of the merger's pairwise maps (3 models or more)")
    cycle_seconds: Seconds | None = None
    repair: RepairScore | None = Field(default=None, description="the merge after REPAIR")


class SubsetRecord(_Record):
    """One subset of the trained models, merged by every merger."""

    size: Count
    models: list[Count] = Field(min_length=2, description="indices of the merged models")
    endpoint_mean: Score = Field(description="the mean of the merged models' own scores")
    mergers: dict[str, MergeRecord]


class MergeSummary(_Record):
    """One merger over the subsets of one size: means, the accuracy range, the largest cycle error."""

    accuracy: Accuracy
    loss: Number = Field(ge=0)
    accuracy_min: Accuracy
    accuracy_max: Accuracy
    repair: Score | None = None
    cycle_error_max: Number | None = Field(default=None, ge=0)


class SizeSummary(_Record):
    """The subsets of one size: the endpoints' and each merger's means."""

    size: Count
    subsets: Count
    endpoint_mean: Score
    mergers: dict[str, MergeSummary]


class PathCurve(_Record):
    """Test loss and accuracy at every lambda of the path, and the loss barrier."""

    loss: list[Number]
    accuracy: list[Accuracy]
    loss_barrier: Number = Field(description="max over lambda of loss(l) - ((1 - l) loss(0) + l loss(1))")


class InterpolationPath(_AlignRecord):
    """Test loss and accuracy of `(1 - l) theta_0 + l theta_1`, unaligned (`naive`) and after C2M3 (`c2m3`)."""

    lambdas: list[Number] = Field(min_length=2)
    naive: PathCurve
    c2m3: PathCurve | None = None


class ModelLayout(_AlignRecord):
    """The architecture's arguments (`weaving.align.models.build_model`) and its parameter count."""

    in_channels: Count
    image_size: Count
    num_classes: Count
    width: list[Count] = Field(min_length=1)
    blocks_per_stage: Count | None = None
    norm: Literal["layer", "channel", "batch"] | None = None
    stem_kernel: Count | None = None
    stem_stride: Count | None = None
    shortcut_kernel: Count | None = Field(default=None, description="ResNet: kernel of the shortcut convs, when not 1")
    convs_per_stage: list[Count] | None = Field(default=None, description="VGG: convs in each stage")
    classifier_width: Count | None = Field(default=None, description="VGG: width of the hidden linear layers")
    parameters: Count


class TrainRecipe(_Record):
    """The training recipe of every model (`weaving.align.models.TrainConfig`)."""

    epochs: Count
    batch_size: Count
    lr: Number = Field(gt=0)
    weight_decay: Number = Field(ge=0)


class Normalisation(_Record):
    """The scalar mean and standard deviation of the training images (in [0, 1]) the inputs are normalised by."""

    mean: Number
    std: Number = Field(gt=0)


class AlignMetrics(_AlignRecord):
    """N models of one architecture trained from different seeds, merged by every merger (`weaving.align.experiment`)."""

    layout: ClassVar[str] = "metrics/align/<dataset>-<arch>.json"
    writer: ClassVar[tuple[str, str]] = ("align@<dataset>-<arch>", "stages/align.py")

    dataset: Name
    arch: Literal["mlp", "resnet", "vgg"]
    model: ModelLayout
    groups: dict[str, Count] = Field(description="permutation group -> units")
    num_models: Annotated[int, Field(strict=True, ge=2, description="N, the models trained")]
    seed: int
    repair: bool = Field(description="REPAIR ran on every merge (the conv nets: ResNet, VGG)")
    repair_samples: Count
    normalisation: Normalisation
    train: TrainRecipe
    train_images: Count
    test_images: Count
    train_seconds: Seconds
    train_final_loss: list[Number] | None = None
    endpoints: list[Score] = Field(description="each trained model's own test score")
    subsets: list[SubsetRecord] = Field(min_length=1)
    summary: list[SizeSummary] = Field(min_length=1)
    path: InterpolationPath
    seconds: Seconds = Field(description="the align stage's experiment time (merges, evaluations, REPAIR, path)")

    @model_validator(mode="after")
    def _consistent(self) -> AlignMetrics:
        problems = _ContractProblems()
        if len(self.endpoints) != self.num_models:
            problems.add(("endpoints",), f"has {len(self.endpoints)} entries for num_models = {self.num_models}")
        mergers = list(self.subsets[0].mergers)
        problems.registered(("subsets", 0, "mergers"), mergers, ALIGN_MERGERS, "merger")
        for i, subset in enumerate(self.subsets):
            loc = ("subsets", i)
            if len(subset.models) != subset.size or len(set(subset.models)) != subset.size:
                problems.add((*loc, "models"), f"must be {subset.size} distinct model indices, got {subset.models}")
            if any(m >= self.num_models for m in subset.models):
                problems.add((*loc, "models"), f"names a model beyond num_models = {self.num_models}: {subset.models}")
            if list(subset.mergers) != mergers:
                problems.add((*loc, "mergers"), f"must hold the mergers {mergers} (as subsets[0]), got {list(subset.mergers)}")
            for name, record in subset.mergers.items():
                if (record.repair is not None) != self.repair:
                    problems.add((*loc, "mergers", name, "repair"), "is due exactly when 'repair' is true")
                due = name != "naive" and subset.size >= 3
                if (record.cycle_error is not None) != due:
                    problems.add((*loc, "mergers", name, "cycle_error"),
                                 "is due exactly for subsets of 3 models or more and mergers other than naive")
        sizes = list(dict.fromkeys(s.size for s in self.subsets))
        if [s.size for s in self.summary] != sizes:
            problems.add(("summary",), f"must hold one entry per subset size {sizes}, got {[s.size for s in self.summary]}")
        for i, entry in enumerate(self.summary):
            count = sum(1 for s in self.subsets if s.size == entry.size)
            if entry.subsets != count:
                problems.add(("summary", i, "subsets"), f"is {entry.subsets} but 'subsets' has {count} of size {entry.size}")
            if list(entry.mergers) != mergers:
                problems.add(("summary", i, "mergers"), f"must hold the mergers {mergers}, got {list(entry.mergers)}")
        path = self.path
        if path.lambdas[0] != 0 or path.lambdas[-1] != 1:
            problems.add(("path", "lambdas"), f"must run from 0 to 1, got {path.lambdas[0]} .. {path.lambdas[-1]}")
        for name in ("naive", "c2m3"):
            curve = getattr(path, name)
            if curve is not None and not len(curve.loss) == len(curve.accuracy) == len(path.lambdas):
                problems.add(("path", name), f"needs one loss and one accuracy per lambda ({len(path.lambdas)})")
        problems.raise_if_any(type(self).__name__)
        return self

    def size_summary(self, size: int) -> SizeSummary | None:
        """The summary of the subsets of `size` models, if any."""
        return next((s for s in self.summary if s.size == size), None)
