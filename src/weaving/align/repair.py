"""REPAIR for merged conv nets (Jordan et al., "REPAIR", ICLR 2023; C2M3 reference ``src/ccmm/matching/repair.py``).

Averaging aligned networks shrinks the variance of their hidden activations. REPAIR measures,
on data, the per-channel mean ``mu_X`` and variance ``var_X`` of every conv's output in each
endpoint model ``X`` (already permuted into the merge's frame), sets the goal statistics to
their means over the endpoints (``goal_mean = mean_X mu_X``, ``goal_var = mean_X var_X``, as
the reference's ``compute_goal_statistics`` for N models), and rescales each output channel
of the merged model's conv so its statistics become the goal: with ``mu``, ``var`` the merged
conv's own output statistics,

    w' = w * s,   b' = (b - mu) * s + goal_mean,   s = sqrt(goal_var + eps) / sqrt(var + eps),

which is the reference's "batch norm with the goal as affine parameters, fused into the conv".
Statistics are population statistics over every image and position of the data given.

One deliberate difference: the reference measures all convs of the merged model in one pass
(train-mode batch norm trackers), so a conv's statistics are taken while the convs before it
are still being corrected; here convs are corrected one at a time in forward order, each
measured after those before it are final, so after REPAIR every conv's output statistics on
that data equal the goal exactly (up to ``eps``). Batch-norm running statistics of the merged
model, if it has any, are reset on the same data before and after ("reset norm statistics").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from weaving.errors import InputError, ParamError

__all__ = ["conv_output_statistics", "forward_ordered_convs", "repair", "reset_batchnorm_statistics"]


def forward_ordered_convs(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` in the order one forward pass calls them."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model.eval()
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    seen: list[str] = []
    for name in order:
        if name not in seen:
            seen.append(name)
    return seen


def conv_output_statistics(model: nn.Module, batches: Sequence[torch.Tensor],
                           names: Sequence[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per conv (all, or ``names``): per-channel mean and population variance (float64) of its
    output over every image and position of ``batches``, the model in eval mode."""
    modules = dict(model.named_modules())
    names = list(names) if names is not None else [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    sums: dict[str, list[torch.Tensor | float]] = {}

    def hook(name: str):
        def collect(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            y = output.detach().to(torch.float64)
            entry = sums.setdefault(name, [0.0, 0.0, 0.0])
            entry[0] = entry[0] + y.sum(dim=(0, 2, 3))
            entry[1] = entry[1] + (y * y).sum(dim=(0, 2, 3))
            entry[2] = entry[2] + y.shape[0] * y.shape[2] * y.shape[3]
        return collect

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name in names:
        total, squares, count = sums[name]
        mean = total / count
        stats[name] = (mean, (squares / count - mean * mean).clamp_min(0.0))
    return stats


def reset_batchnorm_statistics(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Recompute every ``BatchNorm`` running mean and variance of ``model`` as the average over
    ``batches`` (momentum ``None``: cumulative average), in place; a no-op without batch norms."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return model


def repair(merged: nn.Module, endpoints: Sequence[nn.Module], batches: Sequence[torch.Tensor], *,
           eps: float = 1e-5) -> nn.Module:
    """A REPAIRed copy of ``merged`` (module docstring). ``endpoints``: the models that were
    averaged, in the merge's frame; ``batches``: input tensors (the data whose statistics count)."""
    if not endpoints:
        raise ParamError("REPAIR needs the endpoint models that were merged")
    if not batches:
        raise InputError("REPAIR needs data: no batches given")
    if not eps >= 0:
        raise ParamError(f"eps must be >= 0, got {eps!r}")
    model = copy.deepcopy(merged)
    names = forward_ordered_convs(model, batches[0][:1])
    if not names:
        raise ParamError(f"REPAIR rescales conv outputs; {type(merged).__name__} has no nn.Conv2d")
    modules = dict(model.named_modules())
    for name in names:
        if modules[name].bias is None:
            raise ParamError(f"REPAIR needs a bias on every conv; {name!r} has none (build the model with bias=True)")
    endpoint_stats = [conv_output_statistics(m, batches, names) for m in endpoints]
    reset_batchnorm_statistics(model, batches)
    for name in names:
        goal_mean = torch.stack([s[name][0] for s in endpoint_stats]).mean(0)
        goal_var = torch.stack([s[name][1] for s in endpoint_stats]).mean(0)
        mean, var = conv_output_statistics(model, batches, [name])[name]
        scale = torch.sqrt(goal_var + eps) / torch.sqrt(var + eps)
        conv = modules[name]
        with torch.no_grad():
            weight = conv.weight.to(torch.float64) * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
            bias = (conv.bias.to(torch.float64) - mean) * scale + goal_mean
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias.copy_(bias.to(conv.bias.dtype))
    reset_batchnorm_statistics(model, batches)
    return model.eval()
