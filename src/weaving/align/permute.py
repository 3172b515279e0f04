"""Permutations of state dicts, their composition, averaging in a common frame, cycle errors.

Convention (the one ``torch.index_select`` gives): a permutation of a group of ``n`` units is
an int64 index tensor ``p`` of length ``n``, and applying it to an axis re-indexes that axis
as ``new[i] = old[p[i]]``; as a matrix, ``P = I[p]`` (row ``i`` of the identity is ``e_p[i]``)
and the axis is multiplied by ``P`` (rows) or ``P^T`` (columns), so a linear layer
``W`` with group ``g`` on its rows and ``h`` on its columns becomes ``P_g W P_h^T``.
Applying ``p`` then ``q`` is applying ``p[q]`` (``compose(p, q)``); the inverse is ``argsort(p)``.

Frames: each merger returns, per model ``X``, the permutation ``u_X`` taking ``X`` into the
common frame (C2M3's universe, MergeMany's mean, or the reference model). The pairwise map
taking model ``b`` into model ``a``'s frame is then ``u_b`` followed by ``u_a``'s inverse:
``P_ab = compose(u_b, inverse(u_a))`` (C2M3's ``P_A P_B^T``), and every cycle
``a -> b -> c -> a`` of such maps is the identity.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch

from weaving.align.spec import PermutationSpec
from weaving.errors import ParamError

__all__ = [
    "Permutation",
    "apply_permutation",
    "average_state_dicts",
    "compose",
    "cycle_error",
    "identity_permutation",
    "invert",
    "pairwise_maps_from_frames",
    "random_permutation",
    "universe_average",
]

Permutation = dict[str, torch.Tensor]
"""Group name -> int64 index tensor (``new[i] = old[p[i]]`` along each axis the group acts on)."""

PairwiseMaps = Mapping[tuple[int, int], Permutation]


def _check_permutation(perm: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> None:
    for group, size in sizes.items():
        if group not in perm:
            raise ParamError(f"permutation has no entry for group {group!r}; groups: {', '.join(sorted(sizes))}")
        p = perm[group]
        if not isinstance(p, torch.Tensor) or p.ndim != 1 or p.numel() != size or p.is_floating_point():
            raise ParamError(f"permutation of group {group!r} must be a 1-d integer tensor of length {size}")
        if not torch.equal(torch.sort(p.long()).values, torch.arange(size)):
            raise ParamError(f"permutation of group {group!r} is not a permutation of 0..{size - 1}")


def apply_permutation(
    spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor], perm: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Re-index every axis of every tensor that ``spec`` gives a group: ``new[i] = old[perm[group][i]]``.

    Keys the spec does not list, and axes it leaves ``None``, are copied unchanged. The
    result computes the same function as ``state_dict`` when ``spec`` is the architecture's
    true spec (Git Re-Basin's ``apply_permutation``; C2M3 reference ``apply_permutation_to_statedict``).
    """
    sizes: dict[str, int] = {}
    for group, places in spec.groups.items():
        key, axis = places[0]
        if key in state_dict:
            sizes[group] = int(state_dict[key].shape[axis])
    _check_permutation(perm, sizes)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        result = tensor
        for axis, group in enumerate(spec.axes.get(key, ())):
            if group is not None:
                result = torch.index_select(result, axis, perm[group].long())
        out[key] = result if result is not tensor else tensor.clone()
    return out


def identity_permutation(sizes: Mapping[str, int]) -> Permutation:
    """The identity on every group."""
    return {group: torch.arange(size) for group, size in sizes.items()}


def random_permutation(sizes: Mapping[str, int], generator: torch.Generator) -> Permutation:
    """A uniformly random permutation of every group (groups in sorted order), from ``generator``."""
    return {group: torch.randperm(sizes[group], generator=generator) for group in sorted(sizes)}


def invert(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The inverse permutation, group by group: ``argsort(p)``."""
    return {group: torch.argsort(p.long()) for group, p in perm.items()}


def compose(first: Mapping[str, torch.Tensor], then: Mapping[str, torch.Tensor]) -> Permutation:
    """Applying ``first`` then ``then`` equals applying ``first[then]``."""
    return {group: first[group].long()[then[group].long()] for group in first}


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of every floating-point tensor; other tensors (step counters) from the first model."""
    if not state_dicts:
        raise ParamError("nothing to average: no models")
    first = state_dicts[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            stacked = torch.stack([sd[key].to(torch.float64) for sd in state_dicts])
            out[key] = stacked.mean(0).to(tensor.dtype)
        else:
            out[key] = tensor.clone()
    return out


def universe_average(
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    perms_to_frame: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Uniform mean in the common frame: ``mean_X apply_permutation(spec, theta_X, u_X)`` (C2M3's merge)."""
    if len(state_dicts) != len(perms_to_frame):
        raise ParamError(f"{len(perms_to_frame)} permutations for {len(state_dicts)} models")
    return average_state_dicts([apply_permutation(spec, sd, u) for sd, u in zip(state_dicts, perms_to_frame)])


def pairwise_maps_from_frames(perms_to_frame: Sequence[Mapping[str, torch.Tensor]]) -> dict[tuple[int, int], Permutation]:
    """``P_ab = u_b`` then ``u_a^{-1}`` for every ordered pair ``a != b``: the map taking model ``b``
    into model ``a``'s frame through the common frame (C2M3's ``P_A P_B^T``)."""
    inverses = [invert(u) for u in perms_to_frame]
    return {(a, b): compose(perms_to_frame[b], inverses[a])
            for a, b in itertools.permutations(range(len(perms_to_frame)), 2)}


def _pair(maps: PairwiseMaps, a: int, b: int) -> Permutation:
    if (a, b) in maps:
        return dict(maps[(a, b)])
    if (b, a) in maps:
        return invert(maps[(b, a)])
    raise ParamError(f"no pairwise map between models {a} and {b} (in either direction)")


def cycle_error(maps: PairwiseMaps, num_models: int) -> dict[str, float | int | None]:
    """Cycle-consistency error of pairwise maps over every triple ``a < b < c``.

    ``maps[(a, b)]`` takes model ``b`` into ``a``'s frame (missing directions are the inverse
    of the given one). For each triple the cycle ``a -> b -> c -> a`` is the product
    ``C = P_ac P_cb P_ba`` (block-diagonal over groups) and its error ``||C - I||_F``, which for
    permutation matrices is ``sqrt(2 * #units C moves)``. Returns the largest and the mean of
    that norm over triples, the largest fraction of units a cycle moves, and the number of
    triples; ``None`` values when there are fewer than 3 models (no cycle exists).
    """
    triples = list(itertools.combinations(range(num_models), 3))
    if not triples:
        return {"max": None, "mean": None, "max_fraction_moved": None, "triples": 0}
    norms: list[float] = []
    fractions: list[float] = []
    for a, b, c in triples:
        to_b, to_c, back_to_a = _pair(maps, b, a), _pair(maps, c, b), _pair(maps, a, c)
        cycle = compose(compose(to_b, to_c), back_to_a)
        moved = sum(int((p != torch.arange(p.numel())).sum()) for p in cycle.values())
        units = sum(p.numel() for p in cycle.values())
        norms.append(math.sqrt(2 * moved))
        fractions.append(moved / units if units else 0.0)
    return {"max": max(norms), "mean": sum(norms) / len(norms), "max_fraction_moved": max(fractions),
            "triples": len(triples)}


def permutation_matrix(p: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``I[p]``: the matrix with ``P @ x == x[p]``."""
    return torch.eye(p.numel(), dtype=dtype)[p.long()]
