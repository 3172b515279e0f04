"""Models for the alignment experiments, their seeded training and their evaluation.

- ``MLP``: the reference's ``src/ccmm/models/mlp.py`` (784-512-512-512-256-10, ReLU, layers
  ``layer0 .. layer4``) with configurable hidden sizes; spec ``weaving.align.spec.mlp_spec``.
- ``ResNet``: a small residual conv net in the reference's style (``src/ccmm/models/resnet.py``:
  conv, norm, ReLU; residual blocks ``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``,
  a conv + norm shortcut where width or stride changes; global average pool; linear head),
  normalised by ``LayerNorm2d`` (norm ``layer``: ``GroupNorm`` with one group, over channels and
  positions), ``ChannelNorm2d`` (norm ``channel``: over the channels at each position, the
  reference's ``LayerNorm2d``, a ``LayerNorm`` of the channel axis as in Git Re-Basin's Flax code) or
  ``BatchNorm2d``; spec ``weaving.align.spec.resnet_spec``. Its convs carry a bias so that a
  REPAIRed model (``weaving.align.repair``) has the same keys. ``widths = [16w, 32w, 64w]``,
  ``blocks_per_stage = 3``, ``stem_kernel = 3``, ``stem_stride = 1`` is the reference's
  ``ResNet(depth=22, widen_factor=w)`` ("ResNet20 x w") up to the details listed in
  ``docs/align.md`` ("Paper profile").
- ``VGG``: the reference's ``src/ccmm/models/vgg.py`` ``VGG16``: 13 convs (3x3, padding 1, with
  bias) in 5 stages of 2, 2, 3, 3, 3 at widths 64, 128, 256, 512, 512, each conv followed by a
  norm and ReLU, a 2x2 max pool after every stage, then a classifier of three linear layers
  (512 -> 512 -> 512 -> classes, ReLU between); configurable widths; spec
  ``weaving.align.spec.vgg_spec``. Its pools round up (``ceil_mode``), which on the reference's
  32x32 inputs changes nothing and also takes 28x28 images (MNIST, EMNIST) down to 1x1.

Every parameter is initialised from an explicit ``torch.Generator`` (PyTorch's default
schemes: Kaiming-uniform weights with ``a = sqrt(5)``, biases uniform in ``+-1/sqrt(fan_in)``,
norms at weight 1 and bias 0), and training shuffles with another, so a seed fixes a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from weaving.align.spec import PermutationSpec, mlp_spec, resnet_spec, vgg_spec
from weaving.errors import InputError, ParamError

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "ChannelNorm2d",
    "LayerNorm2d",
    "MODEL_NORMS",
    "ResNet",
    "TrainConfig",
    "VGG",
    "VGG16_CONVS_PER_STAGE",
    "VGG16_WIDTHS",
    "build_model",
    "evaluate",
    "images_to_tensor",
    "init_parameters",
    "model_spec",
    "train_model",
]

ARCHITECTURES = ("mlp", "resnet", "vgg")
MODEL_NORMS = ("layer", "channel", "batch")
"""The conv nets' norms: ``LayerNorm2d``, ``ChannelNorm2d``, ``nn.BatchNorm2d``. The first two have the
same keys (``weight``, ``bias``), so the permutation specs know only ``layer`` and ``batch``."""
VGG16_WIDTHS = (64, 128, 256, 512, 512)
"""The reference's ``cfg["VGG16"]``: the width of each of its 5 stages."""
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
"""The reference's ``cfg["VGG16"]``: convs per stage (13 in all), each stage ending in a max pool."""


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes``, ReLU between; returns logits."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (512, 512, 512, 256), num_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.num_layers = len(sizes) - 1
        for i in range(self.num_layers):
            self.add_module(f"layer{i}", nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i}")(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class LayerNorm2d(nn.GroupNorm):
    """Normalise over channels and positions of each sample (``GroupNorm`` with one group),
    with a per-channel affine weight and bias (norm ``layer``). Not the reference's
    ``LayerNorm2d``, which normalises each position over its channels: that is ``ChannelNorm2d``."""

    def __init__(self, channels: int):
        super().__init__(1, channels)


class ChannelNorm2d(nn.Module):
    """Normalise each position of each sample over its channels, with a per-channel affine weight
    and bias (norm ``channel``): the reference's ``LayerNorm2d`` (``nn.LayerNorm((C,))`` on the
    channels-last tensor), with the same keys as ``LayerNorm2d`` here."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return LayerNorm2d(channels)
    return ChannelNorm2d(channels) if kind == "channel" else nn.BatchNorm2d(channels)


def _spec_norm(module: nn.Module) -> str:
    """The spec's name for a norm module: ``batch`` (running statistics) or ``layer`` (weight and bias only)."""
    return "batch" if isinstance(module, nn.BatchNorm2d) else "layer"


class _ConvNorm(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str):
        super().__init__()
        padding = kernel // 2 if kernel % 2 else 0
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=True)
        self.norm = _norm(norm, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, shortcut_kernel: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=True)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=True)
        self.norm2 = _norm(norm, c_out)
        self.shortcut = (_ConvNorm(c_in, c_out, shortcut_kernel, stride, norm) if (stride != 1 or c_in != c_out)
                         else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """Stem ``conv (stem_kernel, stride stem_stride; an even kernel is a patchify conv without
    padding) -> norm -> ReLU``; stage ``s`` has ``blocks_per_stage``
    residual blocks of width ``widths[s]``, the first with stride 2 for ``s > 0`` (its shortcut a
    ``shortcut_kernel`` conv, 1x1 by default, 3x3 in the reference, + norm); global average pool;
    linear head. Keys: ``stem.conv``, ``stem.norm``, ``stages.<s>.<b>.{conv1,norm1,conv2,norm2}``,
    ``stages.<s>.0.shortcut.{conv,norm}``, ``head``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int = 1, norm: str = "layer", stem_kernel: int = 3, stem_stride: int = 2,
                 shortcut_kernel: int = 1):
        super().__init__()
        if shortcut_kernel < 1 or shortcut_kernel % 2 == 0:
            raise ParamError(f"shortcut_kernel must be an odd int >= 1, got {shortcut_kernel!r}")
        if norm not in MODEL_NORMS:
            raise ParamError(f"ResNet norm must be one of {', '.join(MODEL_NORMS)}, got {norm!r}")
        if stem_kernel < 1 or stem_stride < 1:
            raise ParamError(f"stem_kernel and stem_stride must be >= 1, got {stem_kernel!r}, {stem_stride!r}")
        self.stem = _ConvNorm(in_channels, widths[0], stem_kernel, stem_stride, norm)
        stages = []
        c_in = widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(_Block(c_in, width, 2 if (s > 0 and b == 0) else 1, norm, shortcut_kernel))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


class VGG(nn.Module):
    """Stage ``s`` holds ``convs_per_stage[s]`` blocks ``conv 3x3 (padding 1) -> norm -> ReLU`` of
    width ``widths[s]`` and ends in a 2x2 max pool (stride 2, rounding up); the output, flattened,
    goes through ``Linear(widths[-1], classifier_width) -> ReLU -> Linear(classifier_width,
    classifier_width) -> ReLU -> Linear(classifier_width, num_classes)``. The pools must bring the
    image to 1x1 (``image_size <= 2 ** len(widths)``), as the reference's 512-wide classifier
    assumes. Keys: ``features.<i>.conv``, ``features.<i>.norm`` (``i`` counts convs over all
    stages), ``classifier.{0,1,2}``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = VGG16_WIDTHS,
                 convs_per_stage: Sequence[int] = VGG16_CONVS_PER_STAGE, classifier_width: int = 512,
                 norm: str = "layer", image_size: int = 32):
        super().__init__()
        if norm not in MODEL_NORMS:
            raise ParamError(f"VGG norm must be one of {', '.join(MODEL_NORMS)}, got {norm!r}")
        if len(widths) != len(convs_per_stage) or any(int(c) < 1 for c in convs_per_stage):
            raise ParamError(f"VGG needs one positive conv count per stage width, got widths={list(widths)!r}, "
                             f"convs_per_stage={list(convs_per_stage)!r}")
        if classifier_width < 1:
            raise ParamError(f"classifier_width must be >= 1, got {classifier_width!r}")
        side = image_size
        for _ in widths:
            side = math.ceil(side / 2)
        if side != 1:
            raise ParamError(f"VGG with {len(widths)} pooling stages takes images of side at most "
                             f"{2 ** len(widths)} down to 1x1; got image_size {image_size}")
        self.stage_ends: list[int] = []
        layers = []
        c_in = in_channels
        for width, count in zip(widths, convs_per_stage):
            for _ in range(int(count)):
                layers.append(_ConvNorm(c_in, int(width), 3, 1, norm))
                c_in = int(width)
            self.stage_ends.append(len(layers) - 1)
        self.features = nn.ModuleList(layers)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.classifier = nn.ModuleList([nn.Linear(c_in, classifier_width), nn.Linear(classifier_width, classifier_width),
                                         nn.Linear(classifier_width, num_classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ends = set(self.stage_ends)
        for i, layer in enumerate(self.features):
            x = F.relu(layer(x))
            if i in ends:
                x = self.pool(x)
        x = x.flatten(1)
        for i, linear in enumerate(self.classifier):
            x = linear(x)
            if i < len(self.classifier) - 1:
                x = F.relu(x)
        return x


def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Linear/Conv/norm of ``model`` from ``generator`` with PyTorch's default schemes."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, ChannelNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model


def build_model(arch: str, *, in_channels: int, image_size: int, num_classes: int, width: int | Sequence[int],
                blocks_per_stage: int = 1, norm: str = "layer", stem_kernel: int = 3, stem_stride: int = 2,
                convs_per_stage: Sequence[int] = VGG16_CONVS_PER_STAGE, classifier_width: int = 512,
                shortcut_kernel: int = 1, seed: int | None = None) -> nn.Module:
    """An ``MLP`` (``width``: hidden sizes), ``ResNet`` or ``VGG`` (``width``: stage widths) for images
    ``[in_channels, image_size, image_size]`` (``blocks_per_stage``, ``stem_kernel``, ``stem_stride``,
    ``shortcut_kernel``: ResNet only; ``convs_per_stage``, ``classifier_width``: VGG only; ``norm``: both conv nets);
    parameters from ``torch.Generator().manual_seed(seed)``."""
    widths = [int(width)] if isinstance(width, int) else [int(w) for w in width]
    if not widths or any(w < 1 for w in widths):
        raise ParamError(f"widths must be positive integers, got {width!r}")
    if arch == "mlp":
        model: nn.Module = MLP(in_channels * image_size * image_size, widths, num_classes)
    elif arch == "resnet":
        model = ResNet(in_channels, num_classes, widths, blocks_per_stage, norm, stem_kernel, stem_stride,
                       shortcut_kernel)
    elif arch == "vgg":
        model = VGG(in_channels, num_classes, widths, convs_per_stage, classifier_width, norm, image_size)
    else:
        raise ParamError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if seed is not None:
        init_parameters(model, torch.Generator().manual_seed(seed))
    return model


def model_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of an ``MLP``, ``ResNet`` or ``VGG`` instance."""
    if isinstance(model, MLP):
        return mlp_spec(model.num_layers)
    if isinstance(model, ResNet):
        widths = [stage[0].conv2.out_channels for stage in model.stages]
        return resnet_spec(widths, len(model.stages[0]), _spec_norm(model.stem.norm))
    if isinstance(model, VGG):
        return vgg_spec(len(model.features), len(model.classifier), _spec_norm(model.features[0].norm))
    raise ParamError(f"no built-in spec for {type(model).__name__}; write a spec file")


@dataclass(frozen=True)
class TrainConfig:
    """Adam (``lr``, ``weight_decay``) with a cosine decay to 0 over ``epochs`` of mini-batches."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ParamError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ParamError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ParamError(f"lr must be positive, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ParamError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def images_to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]``, ``(x / 255 - mean) / std``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"images must be a uint8 array [N, H, W, C], got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (x - mean) / std


def train_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int, config: TrainConfig,
                progress: bool = False) -> list[float]:
    """Train ``model`` in place on ``images`` (float ``[N, C, H, W]``) and ``labels`` (int64 ``[N]``)
    with cross-entropy; mini-batches shuffled by ``torch.Generator().manual_seed(seed)``.
    Each mini-batch is moved to the model's device (the inputs may stay on the CPU).
    Returns the mean training loss of every epoch."""
    if len(images) != len(labels) or len(images) == 0:
        raise InputError(f"{len(images)} images and {len(labels)} labels; need the same, non-zero number")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    losses = []
    device = next(model.parameters()).device
    model.train()
    for _ in tqdm(range(config.epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(images), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(images), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = F.cross_entropy(model(images[batch].to(device)), labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach()) * len(batch)
            seen += len(batch)
        losses.append(running / seen)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """``{"accuracy": percent correct, "loss": mean cross-entropy}`` of ``model`` in eval mode."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        target = labels[start:start + batch_size]
        loss_sum += float(F.cross_entropy(logits.double(), target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return {"accuracy": 100.0 * correct / len(images), "loss": loss_sum / len(images)}
