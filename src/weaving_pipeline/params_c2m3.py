"""The ``c2m3:`` block of ``params.yaml``: the C2M3 alignment branch (stages ``align_train`` and ``align``).

For every dataset of ``c2m3.datasets`` and architecture of ``c2m3.archs`` (the stages' matrix),
``align_train@<dataset>-<arch>`` trains ``num_models`` models, model ``i`` from seed ``seed + i``
(``weaving.align.experiment.train_models``), and ``align@<dataset>-<arch>`` merges the first ``n``
of them for every ``n`` of ``subset_sizes`` (and ``subsets_per_size - 1`` more subsets of ``n``
models drawn with ``seed``) with naive averaging, pairwise matching, MergeMany and C2M3
(``run_alignment_experiment``; REPAIR on the first ``repair_samples`` training images for the
ResNet and the VGG). Per architecture: its widths and layout (``mlp``: hidden sizes; ``resnet``: stage
widths, blocks per stage, norm, stem; ``vgg``: stage widths, convs per stage, classifier width, norm) and
its training recipe (``train``: Adam, cosine decay). ``vgg`` is optional (absent from the embedded
default); an architecture listed in ``archs`` must have its block.

Checks (each error names its key): at least 2 models; every subset size in ``2..num_models``;
datasets registered (``weaving.datasets``) with uint8 image arrays and prepared by the ``data``
stage (listed in ``datasets``: ``check_c2m3``); architectures known; positive widths and sizes.
Torch-free, like the rest of the params schema.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from weaving_pipeline.params_base import Strict, distinct

ARCHITECTURES = ("mlp", "resnet", "vgg")
"""As `weaving.align.models.ARCHITECTURES` (a test keeps them equal; that module imports torch)."""


def _positive_widths(values: list[int]) -> list[int]:
    for i, value in enumerate(values):
        if value < 1:
            raise ValueError(f"[{i}] = {value}: a width must be >= 1")
    return values


class AlignTrainParams(Strict):
    """Adam with a cosine decay to 0 (`weaving.align.models.TrainConfig`)."""

    epochs: int = Field(ge=1, description="passes over the training split")
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0, description="Adam's learning rate at the start of the cosine decay")
    weight_decay: float = Field(default=0.0, ge=0)

    @field_validator("lr", "weight_decay")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value!r}")
        return value


class MlpParams(Strict):
    """`weaving.align.models.MLP`: input -> width[0] -> ... -> width[-1] -> classes, ReLU between."""

    width: list[int] = Field(min_length=1, description="hidden sizes")
    train: AlignTrainParams

    @field_validator("width")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_widths(values)


class ResnetParams(Strict):
    """`weaving.align.models.ResNet`: a stem conv, stages of residual blocks, global pooling, a linear head."""

    width: list[int] = Field(min_length=1, description="channels of each stage")
    blocks_per_stage: int = Field(default=1, ge=1)
    norm: Literal["layer", "channel", "batch"] = Field(
        default="layer", description="layer: GroupNorm(1) over channels and positions; channel: over the channels at "
                                     "each position (the reference's LayerNorm2d); batch: BatchNorm2d")
    stem_kernel: int = Field(default=3, ge=1)
    stem_stride: int = Field(default=2, ge=1)
    shortcut_kernel: int = Field(default=1, ge=1, description="kernel of the shortcut convs (the reference's: 3)")
    train: AlignTrainParams

    @field_validator("shortcut_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"{value}: an odd kernel (padding k // 2 keeps the block's output size)")
        return value

    @field_validator("width")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_widths(values)


class VggParams(Strict):
    """`weaving.align.models.VGG`: stages of 3x3 conv + norm + ReLU, each ending in a 2x2 max pool; three
    linear layers. The defaults are the reference's VGG16 (13 convs, widths 64-128-256-512-512, classifier 512)."""

    width: list[int] = Field(default=[64, 128, 256, 512, 512], min_length=1, description="channels of each stage")
    convs_per_stage: list[int] = Field(default=[2, 2, 3, 3, 3], min_length=1, description="convs in each stage")
    classifier_width: int = Field(default=512, ge=1, description="width of the two hidden linear layers")
    norm: Literal["layer", "channel", "batch"] = Field(
        default="layer", description="layer: GroupNorm(1) over channels and positions; channel: over the channels at "
                                     "each position (the reference's LayerNorm2d); batch: BatchNorm2d")
    train: AlignTrainParams

    @field_validator("width", "convs_per_stage")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_widths(values)

    @model_validator(mode="after")
    def _one_count_per_stage(self) -> VggParams:
        if len(self.convs_per_stage) != len(self.width):
            raise ValueError(f"convs_per_stage has {len(self.convs_per_stage)} entries, width {len(self.width)}: "
                             f"one conv count per stage")
        return self


class C2m3Params(Strict):
    """C2M3 (Crisostomi et al., NeurIPS 2024) against naive averaging, pairwise matching and MergeMany."""

    datasets: list[str] = Field(min_length=1, description="datasets of the stages' matrix (prepared by `data`)")
    archs: list[str] = Field(min_length=1, description=f"architectures of the stages' matrix: {', '.join(ARCHITECTURES)}")
    num_models: int = Field(description="models trained per dataset and architecture (N >= 2)")
    seed: int = Field(default=0, description="model i starts from seed + i; subsets and matchers use seed")
    subset_sizes: list[int] = Field(min_length=1, description="merge subsets of these many models, each in 2..N")
    subsets_per_size: int = Field(default=1, ge=1, description="the first n models, then more drawn with seed")
    fw_max_iter: int = Field(default=200, ge=1, description="C2M3's Frank-Wolfe iterations at most")
    repair_samples: int = Field(default=500, ge=1, description="training images REPAIR measures (ResNet)")
    barrier_points: int = Field(default=11, ge=2, description="points on the linear path between models 0 and 1")
    mlp: MlpParams
    resnet: ResnetParams
    vgg: VggParams | None = Field(default=None, description="needed when archs lists vgg")

    @field_validator("num_models")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"N = {value}: merging needs at least 2 models")
        return value

    @field_validator("archs")
    @classmethod
    def _known_archs(cls, values: list[str]) -> list[str]:
        unknown = [a for a in values if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"unknown architecture(s) {unknown}; valid: {list(ARCHITECTURES)}")
        return distinct(values)

    @field_validator("datasets")
    @classmethod
    def _registered_datasets(cls, values: list[str]) -> list[str]:
        from weaving.datasets import DATASETS

        unknown = [d for d in values if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; valid: {sorted(DATASETS)}")
        files = [d for d in values if DATASETS[d].format != "npz"]
        if files:
            raise ValueError(f"dataset(s) {files} are not stored as image arrays (format 'files'); the alignment "
                             f"stages need uint8 arrays (format 'npz')")
        return distinct(values)

    @model_validator(mode="after")
    def _sizes_fit(self) -> C2m3Params:
        bad = [(i, n) for i, n in enumerate(self.subset_sizes) if not 2 <= n <= self.num_models]
        if bad:
            i, n = bad[0]
            raise ValueError(f"subset_sizes[{i}] = {n}: a subset size must be in 2..num_models = {self.num_models}")
        distinct(self.subset_sizes)
        missing = [a for a in self.archs if getattr(self, a) is None]
        if missing:
            raise ValueError(f"archs lists {missing} but the c2m3 block has no {missing[0]!r} entry (its layout "
                             f"and train recipe)")
        return self




def check_c2m3(c2m3: C2m3Params, datasets: list[str]) -> None:
    """`c2m3.datasets` must be prepared by the `data` stage, i.e. listed in the top-level `datasets`
    (raises ValueError naming `c2m3.datasets`; `Params` turns it into a ParamsError)."""
    missing = [d for d in c2m3.datasets if d not in datasets]
    if missing:
        raise ValueError(f"c2m3.datasets: {missing} not in datasets (the data stage prepares only those): "
                         f"{list(datasets)}")
