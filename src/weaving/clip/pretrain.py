"""CLIP-style contrastive pretraining of both towers on class-name captions (embedded profile).

The pool is the `pretrain` split of every dataset. Each image is paired with the caption
`template.format(classname)` of its class, the template drawn at random per image and step.
With B images and their B captions in a batch, logits = exp(logit_scale) * normalize(img) @
normalize(txt).T; image i and caption j are a positive pair when their class names are equal
(several images of a class share a batch), and the loss is the mean of the image->text and
text->image cross entropies against the row-normalised positive mask. The logit scale is
learnt, clamped to ln(recipe.max_logit_scale). `model` is trained in place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from weaving.clip._train import (
    distributed_context,
    epoch_batches,
    fingerprint_of,
    resolve_device,
    shift_augment,
    step_generator,
    steps_per_epoch,
    train_loop,
)
from weaving.clip.heads import captions_for, tokenize_for
from weaving.clip.models import image_size_of
from weaving.clip.preprocess import Split, model_uint8_to_tensor, split_uint8_images
from weaving.clip.recipes import PretrainRecipe
from weaving.errors import InputError, ParamError

POOL_SPLIT = "pretrain"


class Dataset(Protocol):
    """What pretraining needs of a prepared dataset (`weaving.datasets.PreparedDataset`)."""

    name: str
    classnames: list[str]
    templates: list[str]

    def split(self, name: str) -> Split: ...


class _CaptionPool:
    """Token ids of every caption, grouped by global class (dataset offset + label)."""

    def __init__(self, model: torch.nn.Module, datasets: Sequence[Dataset]):
        captions, first, count, keys = [], [], [], []
        for ds in datasets:
            for name in ds.classnames:
                first.append(len(captions))
                count.append(len(ds.templates))
                keys.append(name.strip().lower())
                captions.extend(captions_for([name], list(ds.templates)))
        self.tokens = tokenize_for(model, captions)
        self.first = torch.tensor(first)
        self.count = torch.tensor(count)
        _, self.name_id = np.unique(np.array(keys), return_inverse=True)
        self.name_id = torch.as_tensor(self.name_id, dtype=torch.int64)

    def sample(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One caption row per global class in `classes`, template uniform at random."""
        u = torch.rand(len(classes), generator=generator)
        rows = self.first[classes] + (u * self.count[classes]).long().clamp(max=self.count[classes] - 1)
        return self.tokens[rows]


def multi_positive_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss; pairs with equal `keys` are all positives (uniform soft targets)."""
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    positives = (keys[:, None] == keys[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def pretrain(
    model: torch.nn.Module,
    datasets: Sequence[Dataset],
    recipe: PretrainRecipe,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_steps_this_run: int | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Pretrain `model` in place on the pooled `pretrain` splits; returns {"losses", "steps", "seconds", ...}."""
    if not datasets:
        raise InputError("pretrain needs at least one dataset")
    splits = []
    for ds in datasets:
        split = ds.split(POOL_SPLIT)
        images = split_uint8_images(split)
        if images is None:
            raise InputError(f"dataset {ds.name!r}: pretraining needs uint8 array splits, its {POOL_SPLIT!r} split is files")
        labels = np.asarray(split.labels, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(ds.classnames)):
            raise InputError(f"dataset {ds.name!r}: labels outside [0, {len(ds.classnames)})")
        splits.append((images, labels))
    total_images = sum(len(labels) for _, labels in splits)
    if total_images == 0:
        raise InputError(f"the {POOL_SPLIT!r} splits of {[ds.name for ds in datasets]} are all empty")
    ctx = distributed_context()
    if ctx.world_size > 1:
        raise ParamError("pretrain runs in a single process; launch it without torchrun")
    total_steps = recipe.total_steps(total_images)
    if recipe.warmup_steps >= total_steps:
        raise ParamError(f"warmup_steps {recipe.warmup_steps} must be below the {total_steps} training steps")

    device = resolve_device(device, ctx)
    captions = _CaptionPool(model, datasets)
    offsets = np.cumsum([0] + [len(ds.classnames) for ds in datasets])[:-1]
    images = torch.cat([model_uint8_to_tensor(model, imgs) for imgs, _ in splits]).to(device)
    classes = torch.cat([torch.as_tensor(lab + off) for (_, lab), off in zip(splits, offsets)])
    max_shift = round(image_size_of(model) / 16) if recipe.augment == "shift" else 0
    max_log_scale = math.log(recipe.max_logit_scale)
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)

    def make_batches(epoch: int, skip: int):
        return epoch_batches(total_images, recipe.batch_size, seed, epoch, ctx)[skip:]

    def loss_fn(idx: torch.Tensor, step: int) -> torch.Tensor:
        generator = step_generator(seed, 0, step)
        batch_classes = classes[idx]
        tokens = captions.sample(batch_classes, generator).to(device)
        x = shift_augment(images[idx.to(device)], generator, max_shift)
        with torch.no_grad():
            model.logit_scale.clamp_(max=max_log_scale)
        return multi_positive_clip_loss(
            model.encode_image(x).float(), model.encode_text(tokens).float(), model.logit_scale.exp(),
            captions.name_id[batch_classes].to(device),
        )

    fingerprint = fingerprint_of(
        kind="pretrain", recipe=recipe.model_dump(), seed=seed, datasets=[ds.name for ds in datasets],
        examples=[len(lab) for _, lab in splits],
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        log = train_loop(
            module=model, loss_fn=loss_fn, make_batches=make_batches,
            batches_per_epoch=steps_per_epoch(total_images, recipe.batch_size, ctx), total_steps=total_steps,
            recipe=recipe, device=device, ctx=ctx, checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
            progress=progress, desc="pretrain", max_steps_this_run=max_steps_this_run,
        )
    with torch.no_grad():
        model.logit_scale.clamp_(max=max_log_scale)
    model.eval()
    return {**log.as_dict(), "images": total_images, "datasets": [ds.name for ds in datasets]}
