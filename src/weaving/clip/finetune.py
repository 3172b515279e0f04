"""Fine-tuning the image encoder against a frozen zero-shot head (per task, or one split of a
class-incremental sequence), resumable and DDP-aware.

loss = cross_entropy(exp(logit_scale) * normalize(visual(x)) @ head.T, y); only the image
encoder is trained, on a copy: the text tower, the logit scale, the head and `model` itself
are left untouched. Under torchrun (WORLD_SIZE > 1) the copy is wrapped in
DistributedDataParallel, each rank takes `batch_size / world_size` examples of every
global batch (DistributedSampler) and only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from weaving.clip._checks import check_class_subset, check_head, check_labels, check_visual_state, subset_selection
from weaving.clip._train import (
    TrainingInterrupted,
    distributed_context,
    epoch_batches,
    fingerprint_of,
    resolve_device,
    shift_augment,
    state_digest,
    step_generator,
    steps_per_epoch,
    train_loop,
)
from weaving.clip.models import image_size_of
from weaving.clip.preprocess import Split, SplitImages, model_uint8_to_tensor, split_uint8_images
from weaving.clip.recipes import FinetuneRecipe
from weaving.errors import InputError, ParamError

__all__ = ["finetune", "TrainingInterrupted"]


class _Selected(torch.utils.data.Dataset):
    def __init__(self, base: SplitImages, keep: torch.Tensor, labels: torch.Tensor):
        self.base, self.keep, self.labels = base, keep, labels

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        return self.base[int(self.keep[i])][0], self.labels[i]


def finetune(
    model: torch.nn.Module,
    head: torch.Tensor,
    split: Split,
    recipe: FinetuneRecipe,
    seed: int = 0,
    class_subset: Sequence[int] | None = None,
    init_visual: dict[str, torch.Tensor] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_steps_this_run: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of `model.visual` on `split`; return its state dict (CPU tensors).

    `class_subset`: train on the examples of these classes only, against `head[class_subset]`,
    labels remapped to their position in the subset. `init_visual`: start from this image
    encoder state instead of `model.visual`'s. `checkpoint_dir`: save a resumable checkpoint
    every `recipe.checkpoint_every` steps and resume from it. `max_steps_this_run`: raise
    `TrainingInterrupted` after that many steps (simulates a killed job).
    """
    head = check_head(model, head)
    num_classes = head.shape[0]
    labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.int64)
    check_labels(labels, num_classes, "finetune split")
    subset = check_class_subset(class_subset, num_classes)
    keep, train_labels = subset_selection(labels, subset, num_classes)
    if len(keep) == 0:
        raise InputError(f"no training examples{'' if subset is None else f' of classes {subset}'} in the split")
    if init_visual is not None:
        check_visual_state(model, init_visual, "init_visual")
    ctx = distributed_context()
    if recipe.batch_size % ctx.world_size:
        raise ParamError(f"batch_size {recipe.batch_size} is not divisible by the world size {ctx.world_size}")
    total_steps = recipe.total_steps(len(keep), ctx.world_size)
    if recipe.warmup_steps >= total_steps:
        raise ParamError(f"warmup_steps {recipe.warmup_steps} must be below the {total_steps} training steps")

    device = resolve_device(device, ctx)
    visual = copy.deepcopy(model.visual).float()
    if init_visual is not None:
        visual.load_state_dict(init_visual)
    visual.to(device).train()
    for p in visual.parameters():
        p.requires_grad_(True)
    classifier = (head if subset is None else head[subset]).to(device)
    logit_scale = model.logit_scale.detach().float().exp().to(device)
    net = DistributedDataParallel(visual, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.world_size > 1 else visual

    images_u8 = split_uint8_images(split)
    in_memory = images_u8 is not None
    if in_memory:
        images = model_uint8_to_tensor(model, images_u8[keep.numpy()]).to(device)
        targets = train_labels.to(device)
    else:
        dataset = _Selected(SplitImages(split, model), keep, train_labels)
    max_shift = round(image_size_of(model) / 16) if recipe.augment == "shift" else 0

    def make_batches(epoch: int, skip: int):
        batches = epoch_batches(len(keep), recipe.batch_size, seed, epoch, ctx)[skip:]
        if in_memory:
            return ((images[idx.to(device)], targets[idx.to(device)]) for idx in batches)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=[b.tolist() for b in batches], num_workers=recipe.num_workers,
            pin_memory=device.type == "cuda",
        )

    def loss_fn(batch, step: int) -> torch.Tensor:
        x, y = batch
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        x = shift_augment(x, step_generator(seed, ctx.rank, step), max_shift)
        features = F.normalize(net(x).float(), dim=-1)
        return F.cross_entropy(logit_scale * features @ classifier.T, y)

    fingerprint = fingerprint_of(
        kind="finetune", recipe=recipe.model_dump(), seed=seed, class_subset=subset, examples=len(keep),
        world_size=ctx.world_size, head=state_digest([head]),
        init=state_digest(visual.state_dict().values()),
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        train_loop(
            module=visual, loss_fn=loss_fn, make_batches=make_batches,
            batches_per_epoch=steps_per_epoch(len(keep), recipe.batch_size, ctx), total_steps=total_steps,
            recipe=recipe, device=device, ctx=ctx, checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
            progress=progress, desc="finetune", max_steps_this_run=max_steps_this_run,
        )
    return {k: v.detach().to("cpu").clone() for k, v in visual.state_dict().items()}
