"""Helpers shared by the alignment tests (test_align.py, test_align_vgg.py)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batch_norm_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics in every BatchNorm2d (seeded), so that permuting them matters."""
    g = torch.Generator().manual_seed(seed + 99)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g))
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return model


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
