"""Training recipes (pydantic, unknown keys forbidden).

Both recipes: AdamW (weight decay on every parameter), linear warm-up from 0 over
`warmup_steps` then cosine decay to 0 at the last step, optional global-norm gradient
clipping, mixed precision (`amp`) only on CUDA. The length is either `steps` or `epochs`
(one pass = ceil(N / batch_size) steps). The embedded profile's calibrated values live in params.yaml (README, Results);
the paper profile's in profiles/paper.yaml.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    amp: Literal["bf16", "fp16"] | None = None
    num_workers: int = Field(default=0, ge=0)
    checkpoint_every: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of steps or epochs (got steps={self.steps}, epochs={self.epochs})")
        if self.steps is not None and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below steps {self.steps}")
        return self

    def total_steps(self, num_examples: int, world_size: int = 1) -> int:
        """Number of optimiser steps for a dataset of `num_examples` images."""
        if self.steps is not None:
            return self.steps
        per_rank = math.ceil(num_examples / world_size)
        return self.epochs * math.ceil(per_rank / (self.batch_size // world_size))


class FinetuneRecipe(_Recipe):
    """Fine-tuning of the image encoder against a frozen zero-shot head.

    `augment`: "none", or "shift" (random translation by up to 2/32 of the image side,
    zero padding in normalised space, a light augmentation for the small images).
    """

    augment: Literal["none", "shift"] = "none"


class PretrainRecipe(_Recipe):
    """CLIP-style contrastive pretraining of both towers and the logit scale.

    Every image is paired with a caption `template.format(classname)`, the template drawn
    at random per image and step; in-batch captions of the same class are positives too
    (multi-positive targets). `max_logit_scale` clamps exp(logit_scale) as in CLIP (100).
    """

    augment: Literal["none", "shift"] = "none"
    max_logit_scale: float = Field(default=100.0, gt=0)

