"""DARE (Yu et al., 2024) followed by Task Arithmetic.

For each task `t` and tensor: `drop ~ Bernoulli(p)` per element,
`tau'_t = tau_t * (1 - drop) / (1 - p)`, and `M = sum_t tau'_t`.

Masks (order-independent, so streaming key by key gives the same result, and the same for
every `lam`): a `torch.Generator` seeded with `derive_seed("dare", seed, t, key)`, i.e. the
first 8 bytes of `sha256("dare/<seed>/<t>/<key>")` read big-endian, shifted right by one
bit (63 bits), with `t` the 0-based task index; `u = torch.rand(shape, generator=g,
dtype=torch.float64)`, `drop = u < p` (so `p = 0` drops nothing).

As a pooling: no shortcut (each member draws its own mask); the members of each key are
materialised. Its seed is `derive_seed("pooling", "dare", seed)` unless the pooling's parameters give one.
"""

from __future__ import annotations

import math

import torch

from weaving.methods.base import HParam, PerTensorMethod, Workspace, keyed_generator, stack_column_chunks, unit_interval


def dare_keep_mask(shape: tuple[int, ...], *, p: float, seed: int, task: int, key: str) -> torch.Tensor:
    """Boolean mask of the kept elements (`1 - drop`) of task `task`'s tensor `key`."""
    generator = keyed_generator("dare", seed, task, key)
    return torch.rand(shape, generator=generator, dtype=torch.float64) >= p


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def dare(taus: torch.Tensor, *, key: str, p: float, seed: int, workspace: Workspace | None = None) -> torch.Tensor:
    """`M = sum_t tau_t * keep_t / (1 - p)` with the seeded masks of `dare_keep_mask`.

    The same draws and the same values as `where(keep, taus, 0) / (1 - p)` summed over `t`,
    without the boolean `[T, *shape]` mask: each task's draws go into one reused float64
    buffer, and `keep` becomes an all-ones bit mask (`u >= p` compared on the bit patterns,
    which order as the values do for `u, p >= 0`) that keeps `tau_t`'s bits or gives +0.0.
    Scratch lives in `workspace` when given (reused from key to key: no page faults). The key
    is worked on as its flattened `[T, N]` view, in column chunks when large
    (`stack_column_chunks`; else one chunk `[0, N)`): each task's generator draws the chunks
    one after the other (the same sequence as one draw of the whole tensor), so the scratch is
    chunk-sized, not `[T, *shape]` plus float64 draws of the whole key.
    """
    if taus.dtype not in _BITS:
        return _dare_reference(taus, key=key, p=p, seed=seed)
    workspace = Workspace() if workspace is None else workspace
    tasks = taus.shape[0]
    flat = taus.reshape(tasks, math.prod(taus.shape[1:]))  # [T, N], also for T = 0
    int_dtype = _BITS[taus.dtype]
    tau_bits = flat.view(int_dtype)
    threshold = int(torch.tensor(p, dtype=torch.float64).view(torch.int64))
    generators = [keyed_generator("dare", seed, t, key) for t in range(tasks)]
    result = torch.empty(flat.shape[1], dtype=taus.dtype)
    for a, b in stack_column_chunks(taus) or [(0, flat.shape[1])]:
        draws = workspace.take("dare.draws", (b - a,), torch.float64)
        bits = draws.view(torch.int64)
        narrow = workspace.take("dare.mask", (b - a,), int_dtype) if taus.dtype != torch.float64 else None
        kept = workspace.take("dare.kept", (tasks, b - a), taus.dtype)
        kept_bits = kept.view(int_dtype)
        for t, generator in enumerate(generators):
            torch.rand(b - a, generator=generator, dtype=torch.float64, out=draws)
            bits.sub_(threshold).bitwise_right_shift_(63).bitwise_not_()  # all ones where u >= p, else 0
            mask = bits if narrow is None else narrow.copy_(bits)
            torch.bitwise_and(tau_bits[t, a:b], mask, out=kept_bits[t])
        result[a:b] = kept.div_(1.0 - p).sum(0)
    return result.view(taus.shape[1:])


def _dare_reference(taus: torch.Tensor, *, key: str, p: float, seed: int) -> torch.Tensor:
    shape = tuple(taus.shape[1:])
    keep = torch.stack([dare_keep_mask(shape, p=p, seed=seed, task=t, key=key) for t in range(taus.shape[0])])
    return (torch.where(keep, taus, torch.zeros((), dtype=taus.dtype)) / (1.0 - p)).sum(0)


METHOD = PerTensorMethod(
    name="dare",
    summary="random drop with probability p and rescale, then sum",
    hparams=(
        unit_interval("p", 0.5, high_open=True, help="drop probability"),
        HParam("seed", 0, int, help="seed of the drop masks"),
    ),
    merge_tensor=dare,
    scratch=True,
)
