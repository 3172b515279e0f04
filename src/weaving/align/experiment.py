"""The alignment experiment: train N models from different seeds, merge subsets with every merger, evaluate.

``train_models`` trains ``num_models`` models of one architecture on uint8 images, model ``i``
initialised from seed ``seed + i`` and shuffled by seed ``seed + 1000 + i``.
``run_alignment_experiment`` merges, for every subset size ``n`` (2, 3, 5 by default), the
first ``n`` models (and optionally more subsets drawn with the seed) with every merger of
``weaving.align.merge.MERGERS`` (naive averaging, pairwise-to-reference, MergeMany, C2M3),
REPAIRs the merges of conv nets, and returns JSON-able metrics (layout in ``docs/align.md``):
test accuracy and loss of each merge against the mean of its endpoints', cycle errors of each
merger's pairwise maps, C2M3's Frank-Wolfe objective trace, run times, and the test loss and
accuracy along the linear path between models 0 and 1, unaligned and aligned by C2M3; and
per subset size, each merger's mean (and range) over the subsets of that size (``summary``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from weaving.align.merge import MERGERS, align, pairwise_maps_for_cycles
from weaving.align.models import (
    ARCHITECTURES,
    VGG16_CONVS_PER_STAGE,
    TrainConfig,
    build_model,
    evaluate,
    images_to_tensor,
    model_spec,
    train_model,
)
from weaving.align.permute import apply_permutation, average_state_dicts, cycle_error
from weaving.align.repair import repair
from weaving.align.spec import check_models
from weaving.errors import InputError, ParamError

__all__ = ["TrainedModels", "interpolation_path", "run_alignment_experiment", "train_models"]


@dataclass
class TrainedModels:
    """Trained state dicts with what is needed to rebuild and feed them."""

    arch: str
    state_dicts: list[dict[str, torch.Tensor]]
    model_kwargs: dict
    mean: float
    std: float
    train_losses: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    def build(self) -> nn.Module:
        """An (untrained) model of this architecture, ready for ``load_state_dict``."""
        return build_model(self.arch, **self.model_kwargs)

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 ``[N, H, W, C]`` images normalised as in training."""
        return images_to_tensor(images, self.mean, self.std)


def _check_images(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"{what} images must be a uint8 array [N, H, W, C], got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    if images.shape[1] != images.shape[2]:
        raise InputError(f"{what} images must be square, got {images.shape[1]}x{images.shape[2]}")
    if len(labels) != len(images) or len(images) == 0:
        raise InputError(f"{what}: {len(images)} images and {len(labels)} labels; need the same, non-zero number")


def train_models(
    arch: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_models: int,
    seed: int,
    width: Sequence[int],
    num_classes: int,
    blocks_per_stage: int = 1,
    norm: str = "layer",
    stem_kernel: int = 3,
    stem_stride: int = 2,
    shortcut_kernel: int = 1,
    convs_per_stage: Sequence[int] = VGG16_CONVS_PER_STAGE,
    classifier_width: int = 512,
    config: TrainConfig | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> TrainedModels:
    """Train ``num_models`` models of ``arch`` on uint8 ``images`` ``[N, H, W, C]`` and int ``labels``.

    Inputs are normalised with the training images' mean and standard deviation (one scalar
    each). Model ``i`` is initialised from seed ``seed + i`` and its mini-batches shuffled by
    seed ``seed + 1000 + i``; ``config`` (default ``TrainConfig()``) gives the optimiser and its schedule.
    ``device`` is where the models train (``"cuda"`` on a GPU machine; initialisation and shuffling
    stay seeded on the CPU); the returned state dicts are on the CPU. On the CPU results are
    bitwise reproducible for a thread count; on a GPU only up to its kernels' nondeterminism."""
    config = config or TrainConfig()
    if arch not in ARCHITECTURES:
        raise ParamError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if not isinstance(num_models, int) or num_models < 2:
        raise ParamError(f"num_models must be an int >= 2, got {num_models!r}")
    _check_images(images, labels, "training")
    start = time.perf_counter()
    scaled = images.astype(np.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std()) or 1.0
    x = images_to_tensor(images, mean, std)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise InputError(f"labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")
    kwargs = {"in_channels": int(images.shape[3]), "image_size": int(images.shape[1]), "num_classes": num_classes,
              "width": [int(w) for w in width]}
    if arch == "resnet":
        kwargs.update({"blocks_per_stage": blocks_per_stage, "norm": norm, "stem_kernel": stem_kernel,
                       "stem_stride": stem_stride})
        if shortcut_kernel != 1:  # recorded only when not the default, so earlier runs' records stay as they were
            kwargs["shortcut_kernel"] = shortcut_kernel
    elif arch == "vgg":
        kwargs.update({"convs_per_stage": [int(c) for c in convs_per_stage], "classifier_width": classifier_width,
                       "norm": norm})
    state_dicts, losses = [], []
    for i in tqdm(range(num_models), desc=f"train {arch}", unit="model", disable=not progress, leave=False):
        model = build_model(arch, seed=seed + i, **kwargs).to(device)
        losses.append(train_model(model, x, y, seed=seed + 1000 + i, config=config))
        state_dicts.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    return TrainedModels(arch, state_dicts, kwargs, mean, std, losses, time.perf_counter() - start)


def _load(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model.eval()


def interpolation_path(build, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], x: torch.Tensor,
                       y: torch.Tensor, lambdas: Sequence[float]) -> dict:
    """Test loss and accuracy of ``(1 - l) a + l b`` for every ``l``, and the loss barrier
    ``max_l [loss(l) - ((1 - l) loss(0) + l loss(1))]`` (``lambdas`` must hold 0 and 1 at the ends)."""
    losses, accuracies = [], []
    for lam in lambdas:
        mixed = {k: ((1 - lam) * a[k].double() + lam * b[k].double()).to(a[k].dtype) if a[k].is_floating_point()
                 else a[k] for k in a}
        metrics = evaluate(_load(build(), mixed), x, y)
        losses.append(metrics["loss"])
        accuracies.append(metrics["accuracy"])
    barrier = max(loss - ((1 - lam) * losses[0] + lam * losses[-1]) for lam, loss in zip(lambdas, losses))
    return {"loss": losses, "accuracy": accuracies, "loss_barrier": barrier}


def _subsets(num_models: int, size: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    chosen = [tuple(range(size))]
    others = [c for c in itertools.combinations(range(num_models), size) if c != chosen[0]]
    if count > 1 and others:
        picks = rng.choice(len(others), size=min(count - 1, len(others)), replace=False)
        chosen += [others[i] for i in sorted(picks)]
    return chosen


def run_alignment_experiment(
    trained: TrainedModels,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    repair_images: np.ndarray | None = None,
    repair_samples: int = 500,
    subset_sizes: Sequence[int] = (2, 3, 5),
    subsets_per_size: int = 1,
    mergers: Sequence[str] = MERGERS,
    use_repair: bool | None = None,
    seed: int = 0,
    fw_max_iter: int = 200,
    barrier_points: int = 11,
    batch_size: int = 500,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Merge subsets of ``trained`` with every merger and evaluate (module docstring).

    The first ``repair_samples`` of ``repair_images`` (uint8; training images in the pipeline)
    feed REPAIR, which runs on every merge when ``use_repair`` (default: for the conv nets, ResNet and VGG).
    ``workers``: threads for C2M3's linear assignments. Returns a JSON-able dict.
    """
    num_models = len(trained.state_dicts)
    unknown = [m for m in mergers if m not in MERGERS]
    if unknown:
        raise ParamError(f"unknown merger {unknown[0]!r}; valid: {', '.join(MERGERS)}")
    bad = [n for n in subset_sizes if not isinstance(n, int) or n < 2 or n > num_models]
    if bad:
        raise ParamError(f"subset sizes must be ints in 2..{num_models} (the number of models), got {bad[0]!r}")
    if subsets_per_size < 1:
        raise ParamError(f"subsets_per_size must be >= 1, got {subsets_per_size!r}")
    if barrier_points < 2:
        raise ParamError(f"barrier_points must be >= 2, got {barrier_points!r}")
    _check_images(test_images, test_labels, "test")
    use_repair = trained.arch in ("resnet", "vgg") if use_repair is None else use_repair
    if use_repair:
        if repair_images is None:
            raise ParamError("REPAIR needs repair_images (uint8 [N, H, W, C])")
        if not isinstance(repair_samples, int) or repair_samples < 1:
            raise ParamError(f"repair_samples must be an int >= 1, got {repair_samples!r}")
        repair_images = repair_images[:repair_samples]
        _check_images(repair_images, np.zeros(len(repair_images)), "REPAIR")
    start = time.perf_counter()
    spec = model_spec(trained.build())
    sizes = check_models(spec, trained.state_dicts)
    x_test = trained.inputs(test_images)
    y_test = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64)
    repair_batches = list(trained.inputs(repair_images).split(batch_size)) if use_repair else []

    def score(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return evaluate(_load(trained.build(), state), x_test, y_test, batch_size)

    endpoints = [score(sd) for sd in trained.state_dicts]
    rng = np.random.default_rng(seed)
    subsets_out = []
    jobs = [(n, subset) for n in subset_sizes for subset in _subsets(num_models, n, subsets_per_size, rng)]
    universe_pair = None
    for n, subset in tqdm(jobs, desc=f"merge {trained.arch}", unit="subset", disable=not progress, leave=False):
        members = [trained.state_dicts[i] for i in subset]
        entry: dict = {
            "size": n, "models": list(subset),
            "endpoint_mean": {k: float(np.mean([endpoints[i][k] for i in subset])) for k in ("accuracy", "loss")},
            "mergers": {},
        }
        for name in mergers:
            result = align(name, spec, members, seed=seed, fw_max_iter=fw_max_iter, workers=workers)
            merged = average_state_dicts([apply_permutation(spec, sd, u) for sd, u in zip(members, result.perms)])
            record: dict = {**score(merged), "seconds": result.seconds, **result.info}
            if name != "naive" and n >= 3:
                cycle_start = time.perf_counter()
                maps = pairwise_maps_for_cycles(name, spec, members, result, seed=seed)
                record["cycle_error"] = cycle_error(maps, n)
                record["cycle_seconds"] = time.perf_counter() - cycle_start
            if use_repair:
                repair_start = time.perf_counter()
                aligned = [_load(trained.build(), apply_permutation(spec, sd, u)) for sd, u in zip(members, result.perms)]
                repaired = repair(_load(trained.build(), merged), aligned, repair_batches)
                record["repair"] = {**evaluate(repaired, x_test, y_test, batch_size),
                                    "seconds": time.perf_counter() - repair_start}
            entry["mergers"][name] = record
            if name == "c2m3" and set(subset) >= {0, 1} and universe_pair is None:
                position = {model: k for k, model in enumerate(subset)}
                universe_pair = [apply_permutation(spec, members[position[i]], result.perms[position[i]])
                                 for i in (0, 1)]
        subsets_out.append(entry)
    summary = []
    for n in subset_sizes:
        group = [entry for entry in subsets_out if entry["size"] == n]
        merged_stats: dict = {}
        for name in mergers:
            records = [entry["mergers"][name] for entry in group]
            stats: dict = {k: float(np.mean([r[k] for r in records])) for k in ("accuracy", "loss")}
            stats["accuracy_min"] = float(min(r["accuracy"] for r in records))
            stats["accuracy_max"] = float(max(r["accuracy"] for r in records))
            if use_repair:
                stats["repair"] = {k: float(np.mean([r["repair"][k] for r in records])) for k in ("accuracy", "loss")}
            if "cycle_error" in records[0]:
                stats["cycle_error_max"] = max(r["cycle_error"]["max"] for r in records)
            merged_stats[name] = stats
        summary.append({"size": n, "subsets": len(group),
                        "endpoint_mean": {k: float(np.mean([e["endpoint_mean"][k] for e in group]))
                                          for k in ("accuracy", "loss")},
                        "mergers": merged_stats})
    lambdas = [float(v) for v in np.linspace(0.0, 1.0, barrier_points)]
    path = {"lambdas": lambdas,
            "naive": interpolation_path(trained.build, trained.state_dicts[0], trained.state_dicts[1], x_test, y_test,
                                        lambdas)}
    if universe_pair is not None:
        path["c2m3"] = interpolation_path(trained.build, universe_pair[0], universe_pair[1], x_test, y_test, lambdas)
    return {
        "arch": trained.arch,
        "model": {**trained.model_kwargs, "parameters": int(sum(v.numel() for v in trained.state_dicts[0].values()))},
        "groups": sizes,
        "num_models": num_models,
        "seed": seed,
        "repair": use_repair,
        "repair_samples": len(repair_images) if use_repair else 0,
        "normalisation": {"mean": trained.mean, "std": trained.std},
        "train_seconds": trained.seconds,
        "train_final_loss": [losses[-1] for losses in trained.train_losses] if trained.train_losses else None,
        "endpoints": endpoints,
        "subsets": subsets_out,
        "summary": summary,
        "path": path,
        "seconds": time.perf_counter() - start,
    }
