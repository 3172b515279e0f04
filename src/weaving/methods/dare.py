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

import torch

from weaving.methods.base import HParam, PerTensorMethod, keyed_generator, unit_interval


def dare_keep_mask(shape: tuple[int, ...], *, p: float, seed: int, task: int, key: str) -> torch.Tensor:
    """Boolean mask of the kept elements (`1 - drop`) of task `task`'s tensor `key`."""
    generator = keyed_generator("dare", seed, task, key)
    return torch.rand(shape, generator=generator, dtype=torch.float64) >= p


def dare(taus: torch.Tensor, *, key: str, p: float, seed: int) -> torch.Tensor:
    """`M = sum_t tau_t * keep_t / (1 - p)` with the seeded masks of `dare_keep_mask`."""
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
)
