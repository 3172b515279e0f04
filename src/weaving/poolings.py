"""Pooling functions of Weight Weaving, element-wise over the N members.

Members (`pool_over`): `all` = `tau_1..tau_T, lam_1*M..lam_K*M` (the paper's A*);
`augmented` = `lam_1*M..lam_K*M` (the paper's A), with `M` the method's merge at `lam = 1`.

- `avg`: the arithmetic mean of the members. Its fast path sums the taus as Task Arithmetic
  does (`running_sum`, left to right), then adds `(sum_k lam_k) * M` and divides by N.
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

A search space over hyper-parameters has one merge `M_c` per non-lam combination:
`weave_groups` pools its members (taus, then the points in member order) with each pooling's
`fast_groups`, asking for one merge at a time, or materialises them (`build_group_members`).

Merge methods as poolings (docs/merging.md, "Merge methods as poolings"):

`pooling` may name a registered merge method `g` at its own hyper-parameters: the members of a
weave (the taus per `pool_over`, then the points `lam_k * M_c` in member order) are stacked as
task vectors and merged by `g` at lam 1, `pooled = g(members, **params)`. A `MethodPooling` is
that choice once validated (`weaving.request.validate_request` builds it).

Runs (`PoolingRun`) see one key at a time through a `Members` view: the taus, each merge `M_c`
(asked for only when needed) and the stacked members (built at most once per key).

- Generic path (every method; `materialize=True` always takes it): the members of each key are
  built, streamed key by key, and `g`'s own run (over a layout of N = T + K "tasks") sees them,
  statistics passes included (TIES's and PCB's model-wide order statistics are over the members).
- Shortcut (`MergeMethod.as_pooling`, where the structure gives the same numbers exactly): TIES
  (`weaving.methods.ties.TiesPoolingRun`) selects its per-row trim thresholds over the T taus
  and the C merges only, then trims the members with them.

Seeds: a method that draws (DARE) as a pooling takes `params["seed"]` if given, else
`derive_seed("pooling", name, seed)` from the weave's seed: its masks then differ from those of
the same method used as the merge (which uses `seed` itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from weaving.catalogue import POOL_OVER, POOLING_ENTRIES
from weaving.errors import ParamError, choices
from weaving.methods.base import MergeMethod, PoolingRun, PoolingShape, keyed_generator, running_sum
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
        total = running_sum(taus.unbind(0)).add_(total)  # Task Arithmetic's sum of the taus
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


# ---------------------------------------------------------------------------- several merges (search spaces)
#
# A search space over hyper-parameters has several merges `M_c` (one per non-lam combination c);
# a group is `(c, positions, lams)`: the member positions among the points of the merge `M_c`
# and their lams (a compute-dtype tensor). `merge_of(c)` computes `M_c` when asked; a fast path
# asks for each merge once and keeps only the running pool, never two merges at a time.

Group = tuple[int, Sequence[int], torch.Tensor]


def _avg_groups(taus: torch.Tensor, merge_of: Callable[[int], torch.Tensor], groups: Sequence[Group],
                num_points: int, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    total: torch.Tensor | None = None
    for combination, _, lams in groups:
        term = lams.sum() * merge_of(combination)
        total = term if total is None else total.add_(term)
    assert total is not None
    if pool_over == "all":
        total = running_sum(taus.unbind(0)).add_(total)  # Task Arithmetic's sum of the taus
    return total / num_members(taus.shape[0], num_points, pool_over)


def _magmax_groups(taus: torch.Tensor, merge_of: Callable[[int], torch.Tensor], groups: Sequence[Group],
                   num_points: int, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    # Within a group the largest |x| is at its largest |lam| (the last such member on ties);
    # across groups a tie goes to the later member, so the groups are visited in the order of
    # the positions of those members, each replacing the pool where it is at least as large.
    winners = []
    for combination, positions, lams in groups:
        k = lams.numel() - 1 - int(lams.abs().flip(0).argmax())
        winners.append((positions[k], combination, lams[k]))
    best = pick(taus, last_argmax_abs(taus)) if pool_over == "all" else None
    for _, combination, lam in sorted(winners, key=lambda winner: winner[0]):
        scaled = lam * merge_of(combination)
        best = scaled if best is None else torch.where(scaled.abs() >= best.abs(), scaled, best)
    assert best is not None
    return best


def _random_groups(taus: torch.Tensor, merge_of: Callable[[int], torch.Tensor], groups: Sequence[Group],
                   num_points: int, pool_over: str, draws: torch.Tensor | None) -> torch.Tensor:
    assert draws is not None
    point_lams = torch.empty(num_points, dtype=taus.dtype)
    point_groups = torch.empty(num_points, dtype=torch.int64)
    for combination, positions, lams in groups:
        index = torch.tensor(list(positions), dtype=torch.int64)
        point_lams[index] = lams
        point_groups[index] = combination
    num_tasks = taus.shape[0] if pool_over == "all" else 0
    point = (draws - num_tasks).clamp_(min=0)
    drawn_group = point_groups[point]
    if num_tasks:
        result = pick(taus, draws.clamp(max=num_tasks - 1))
        drawn_group[draws < num_tasks] = -1
    else:
        result = torch.zeros(draws.shape, dtype=taus.dtype)
    scale = point_lams[point]  # lam of the drawn member: the same product lam_k * M_c as a built member
    for combination, _, _ in groups:
        result = torch.where(drawn_group == combination, scale * merge_of(combination), result)
    return result


def build_group_members(taus: torch.Tensor, merge_of: Callable[[int], torch.Tensor], groups: Sequence[Group],
                        num_points: int, pool_over: str) -> torch.Tensor:
    """The stacked members `[N, *shape]` of several merges: taus (`all`), then every point in order."""
    num_tasks = taus.shape[0] if pool_over == "all" else 0
    members = torch.empty((num_tasks + num_points, *taus.shape[1:]), dtype=taus.dtype)
    members[:num_tasks] = taus[:num_tasks]
    for combination, positions, lams in groups:
        merged = merge_of(combination)
        rows = torch.tensor([num_tasks + p for p in positions], dtype=torch.int64)
        members[rows] = lams.view(-1, *([1] * merged.ndim)) * merged
    return members


@dataclass(frozen=True)
class Pooling:
    """A registered pooling: `fast(taus, M, lambdas, pool_over, draws)`, `pool(members, draws)`,
    and `fast_groups(taus, merge_of, groups, num_points, pool_over, draws)` over several merges."""

    name: str
    summary: str
    fast: Callable[..., torch.Tensor]
    pool: Callable[..., torch.Tensor]
    random: bool = False
    fast_groups: Callable[..., torch.Tensor] | None = None


_COMPUTATIONS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], bool, Callable[..., torch.Tensor]]] = {
    "avg": (_avg_fast, _avg_pool, False, _avg_groups),
    "random": (_random_fast, _random_pool, True, _random_groups),
    "magmax": (_magmax_fast, _magmax_pool, False, _magmax_groups),
}
"""Each pooling's fast path, materialised pooling, whether it draws members at random, and its
fast path over several merges."""

POOLINGS: dict[str, Pooling] = {
    name: Pooling(name, entry.summary, *_COMPUTATIONS[name]) for name, entry in POOLING_ENTRIES.items()
}


@dataclass(frozen=True)
class MethodPooling:
    """A merge method used as the pooling, with its validated hyper-parameters `params`."""

    method: MergeMethod
    params: Mapping[str, float | int] = field(default_factory=dict)
    random: bool = field(default=False, init=False)  # its draws (DARE's) are the method's own

    @property
    def name(self) -> str:
        return self.method.name

    def start(self, shape: PoolingShape, *, materialize: bool = False) -> PoolingRun:
        """The run of this pooling over `shape`'s members (`materialize`: never the shortcut)."""
        if not materialize and self.method.as_pooling is not None:
            return self.method.as_pooling(self.params, shape)
        return PoolingRun(self.method.start(self.params, shape.member_layout))


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


def weave_groups(
    pooling: Pooling,
    taus: torch.Tensor,
    merge_of: Callable[[int], torch.Tensor],
    groups: Sequence[Group],
    num_points: int,
    *,
    pool_over: str,
    seed: int,
    key: str,
    materialize: bool = False,
) -> torch.Tensor:
    """Pool the members of one key over several merges (a search space over hyper-parameters).

    `groups`: `(c, positions, lams)` per merge `M_c = merge_of(c)` (see above); the members are
    `taus` (`all`), then the `num_points` points `lam * M_c` in position order. One group holding
    every point is `weave_tensor` over its lams. `materialize=True` builds the N members;
    otherwise each merge is asked for once, and the draws of `random` are those of the built members.
    """
    if len(groups) == 1:
        combination, _, lams = groups[0]
        return weave_tensor(pooling, taus, merge_of(combination), lams, pool_over=pool_over, seed=seed, key=key,
                            materialize=materialize)
    if materialize:
        members = build_group_members(taus, merge_of, groups, num_points, pool_over)
        return pool_members(pooling, members, seed=seed, key=key)
    count = num_members(taus.shape[0], num_points, pool_over)
    draws = member_draws(seed, key, count, tuple(taus.shape[1:])) if pooling.random else None
    assert pooling.fast_groups is not None, pooling.name
    return pooling.fast_groups(taus, merge_of, groups, num_points, pool_over, draws)
