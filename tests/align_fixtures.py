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


def conv_output_statistics(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple]:
    """Per Conv2d (by module name): the mean and population variance of each output channel over `batches`
    (numpy float64), as REPAIR's targets are defined."""
    collected: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: collected.setdefault(name, []).append(o))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for hook in hooks:
        hook.remove()
    out = {}
    for name, outputs in collected.items():
        y = torch.cat(outputs).double().transpose(0, 1).flatten(1).numpy()
        out[name] = (y.mean(1), y.var(1))
    return out


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
