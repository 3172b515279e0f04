"""Pooling functions of Weight Weaving, element-wise over the N members.

Members (`pool_over`): `all` = `tau_1..tau_T, lam_1*M..lam_K*M` (the paper's A*);
`augmented` = `lam_1*M..lam_K*M` (the paper's A), with `M` the method's merge at `lam = 1`.

- `avg`: the arithmetic mean of the members.
- `random`: per element one member drawn uniformly at random. Draws: `u = torch.randint(N,
  shape, generator=g)` with `g` seeded by `derive_seed("random-pooling", seed, key)` (first
  8 bytes of `sha256("random-pooling/<seed>/<key>")`, big-endian, shifted right by one bit),
  so a key's draws do not depend on the order keys are processed in.
- `magmax`: the member of largest `|x|`; on ties the later member wins.

Names, labels and summaries are registered in `weaving.catalogue.POOLING_ENTRIES`; a new
pooling adds its two functions to `_COMPUTATIONS` below and one entry there.

Each pooling has a fast path that uses `M` once and never builds the members (memory
independent of K), and a materialised path (Algorithm 1: build every member, stack, pool).
Both use the same draws; `lam_k * M` is always the element-wise product of `M` with the
compute-dtype value of `lam_k`, so `random` agrees exactly between the paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from weaving.catalogue import POOL_OVER, POOLING_ENTRIES
from weaving.errors import ParamError, choices
from weaving.methods.base import keyed_generator
from weaving.methods.magmax import last_argmax_abs, pick


def build_members(taus: torch.Tensor, merged: torch.Tensor, lambdas: torch.Tensor, pool_over: str) -> torch.Tensor:
    """The stacked members `[N, *shape]` (Algorithm 1, lines 7-10)."""
    scaled = lambdas.view(-1, *([1] * merged.ndim)) * merged
    return torch.cat([taus, scaled]) if pool_over == "all" else scaled


def num_members(num_tasks: int, num_lambdas: int, pool_over: str) -> int:
    return num_tasks + num_lambdas if pool_over == "all" else num_lambdas


def member_draws(seed: int, key: str, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The member index drawn for each element of `key` (int64, uniform in [0, count))."""
    return torch.randint(count, shape, generator=keyed_generator("random-pooling", seed, key))


def _avg_fast(taus: torch.Tensor, merged: torch.Tensor, lambdas: torch.Tensor, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    total = lambdas.sum() * merged
    if pool_over == "all":
        total = taus.sum(0) + total
    return total / num_members(taus.shape[0], lambdas.numel(), pool_over)


def _avg_pool(members: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
    return members.mean(0)


def _magmax_fast(taus: torch.Tensor, merged: torch.Tensor, lambdas: torch.Tensor, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    # Among lam_k * M the largest |x| is at the largest |lam_k| (the last such k on ties).
    largest = lambdas.numel() - 1 - int(lambdas.abs().flip(0).argmax())
    scaled = lambdas[largest] * merged
    if pool_over == "augmented":
        return scaled
    best_task = pick(taus, last_argmax_abs(taus))
    return torch.where(scaled.abs() >= best_task.abs(), scaled, best_task)


def _magmax_pool(members: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
    return pick(members, last_argmax_abs(members))


def _random_fast(taus: torch.Tensor, merged: torch.Tensor, lambdas: torch.Tensor, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    assert draws is not None
    if pool_over == "augmented":
        return lambdas[draws] * merged
    num_tasks = taus.shape[0]
    from_task = pick(taus, draws.clamp(max=num_tasks - 1))
    from_merge = lambdas[(draws - num_tasks).clamp(min=0)] * merged
    return torch.where(draws < num_tasks, from_task, from_merge)


def _random_pool(members: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
    assert draws is not None
    return pick(members, draws)


@dataclass(frozen=True)
class Pooling:
    """A registered pooling: `fast(taus, M, lambdas, pool_over, draws)`, `pool(members, draws)`."""

    name: str
    summary: str
    fast: Callable[..., torch.Tensor]
    pool: Callable[..., torch.Tensor]
    random: bool = False


_COMPUTATIONS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], bool]] = {
    "avg": (_avg_fast, _avg_pool, False),
    "random": (_random_fast, _random_pool, True),
    "magmax": (_magmax_fast, _magmax_pool, False),
}
"""Each pooling's fast path, materialised pooling, and whether it draws members at random."""

POOLINGS: dict[str, Pooling] = {
    name: Pooling(name, entry.summary, *_COMPUTATIONS[name]) for name, entry in POOLING_ENTRIES.items()
}


def get_pooling(name: str) -> Pooling:
    """`POOLINGS[name]`, or `ParamError` listing the valid names."""
    if not isinstance(name, str) or name not in POOLINGS:
        raise ParamError(f"unknown pooling {name!r}; valid: {choices(POOLINGS)}")
    return POOLINGS[name]


def check_pool_over(pool_over: str) -> str:
    if pool_over not in POOL_OVER:
        raise ParamError(f"unknown pool_over {pool_over!r}; valid: {choices(POOL_OVER)}")
    return pool_over


def weave_tensor(
    pooling: Pooling,
    taus: torch.Tensor,
    merged: torch.Tensor,
    lambdas: torch.Tensor,
    *,
    pool_over: str,
    seed: int,
    key: str,
    materialize: bool = False,
) -> torch.Tensor:
    """Pool the members of one key: `taus` `[T, *shape]`, `merged` = M at lam 1, `lambdas` `[K]`.

    All three tensors share the compute dtype. `materialize=True` runs Algorithm 1 as
    written (builds the N members); otherwise the fast path.
    """
    if materialize:
        return pool_members(pooling, build_members(taus, merged, lambdas, pool_over), seed=seed, key=key)
    count = num_members(taus.shape[0], lambdas.numel(), pool_over)
    draws = member_draws(seed, key, count, tuple(merged.shape)) if pooling.random else None
    return pooling.fast(taus, merged, lambdas, pool_over, draws)


def pool_members(pooling: Pooling, members: torch.Tensor, *, seed: int, key: str) -> torch.Tensor:
    """Algorithm 1's pooling of stacked members `[N, *shape]` of one key (random: seeded by key)."""
    draws = member_draws(seed, key, members.shape[0], tuple(members.shape[1:])) if pooling.random else None
    return pooling.pool(members, draws)
