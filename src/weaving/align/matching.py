"""Git Re-Basin weight matching and the mergers built on it: pairwise-to-reference and MergeMany.

Weight matching (Ainsworth et al., "Git Re-Basin", ICLR 2023, Algorithm 1; C2M3 reference
``src/ccmm/matching/weight_matching.py``) finds the permutation ``pi`` of model ``B`` that
maximises ``sum_key <W_A[key], pi(W_B)[key]>`` by coordinate ascent over the groups: for
group ``g`` (the others held fixed) the objective is linear in ``P_g``, with similarity
matrix ``S_g = sum_{(key, axis) in g} mat_axis(W_A) mat_axis(pi_{-g}(W_B))^T`` (``mat_axis``
moves ``axis`` first and flattens the rest), maximised by one linear assignment. Groups are
visited in a seeded random order; sweeps stop when no group improves by more than 1e-12, or
after ``max_iter`` sweeps.

MergeMany (Git Re-Basin, Algorithm 3; reference ``merger.py`` ``GitRebasinMerger``): visit the
models in a seeded random order, match each to the mean of the others and permute it; stop
when a whole round lowers no model's distance to that mean, or after ``max_iter`` rounds;
merge by the mean. Pairwise-to-reference (reference ``GitRebasinPairwiseMerger``): match
every model to the first one, then take the mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from weaving.align.permute import (
    Permutation,
    apply_permutation,
    average_state_dicts,
    compose,
    identity_permutation,
    invert,
)
from weaving.align.spec import PermutationSpec, group_sizes

__all__ = ["all_pairs_matching", "match_to_reference", "merge_many", "solve_lap", "weight_matching"]


def solve_lap(score: torch.Tensor) -> torch.Tensor:
    """``argmax_P <score, P>`` over permutation matrices: ``p`` with ``P[i, p[i]] = 1``
    (``scipy.optimize.linear_sum_assignment(score, maximize=True)``)."""
    rows, cols = linear_sum_assignment(score.detach().to(torch.float64).cpu().numpy(), maximize=True)
    assert (rows == np.arange(len(rows))).all()
    return torch.as_tensor(cols, dtype=torch.int64)


def _permute_other_axes(
    tensor: torch.Tensor, axes: Sequence[str | None], perm: Mapping[str, torch.Tensor], except_axis: int
) -> torch.Tensor:
    for axis, group in enumerate(axes):
        if group is not None and axis != except_axis:
            tensor = torch.index_select(tensor, axis, perm[group])
    return tensor


def _unfold(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.movedim(tensor, axis, 0).reshape(tensor.shape[axis], -1)


def weight_matching(
    spec: PermutationSpec,
    fixed: Mapping[str, torch.Tensor],
    permutee: Mapping[str, torch.Tensor],
    *,
    rng: np.random.Generator,
    max_iter: int = 100,
    init: Mapping[str, torch.Tensor] | None = None,
) -> Permutation:
    """The permutation ``pi`` (index form, see ``weaving.align.permute``) such that
    ``apply_permutation(spec, permutee, pi)`` best matches ``fixed`` in the inner-product sense
    (Git Re-Basin weight matching, described in the module docstring). ``rng`` orders the groups."""
    sizes = group_sizes(spec, fixed)
    perm = {g: p.clone().long() for g, p in init.items()} if init is not None else identity_permutation(sizes)
    names = list(spec.groups)
    fixed64 = {key: fixed[key].to(torch.float64) for key in spec.permuted_keys()}
    permutee64 = {key: permutee[key].to(torch.float64) for key in spec.permuted_keys()}
    for _ in range(max_iter):
        progress = False
        for index in rng.permutation(len(names)):
            group = names[index]
            n = sizes[group]
            similarity = torch.zeros((n, n), dtype=torch.float64)
            for key, axis in spec.groups[group]:
                w_b = _permute_other_axes(permutee64[key], spec.axes[key], perm, axis)
                similarity += _unfold(fixed64[key], axis) @ _unfold(w_b, axis).T
            new = solve_lap(similarity)
            rows = torch.arange(n)
            old_score = float(similarity[rows, perm[group]].sum())
            new_score = float(similarity[rows, new].sum())
            perm[group] = new
            progress = progress or new_score > old_score + 1e-12
        if not progress:
            break
    return perm


def match_to_reference(
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int,
    reference: int = 0,
    max_iter: int = 100,
) -> list[Permutation]:
    """Permutations taking each model into the reference model's frame by weight matching
    (the identity for the reference itself)."""
    rng = np.random.default_rng(seed)
    sizes = group_sizes(spec, state_dicts[0])
    perms: list[Permutation] = []
    for index, state in enumerate(state_dicts):
        if index == reference:
            perms.append(identity_permutation(sizes))
        else:
            perms.append(weight_matching(spec, state_dicts[reference], state, rng=rng, max_iter=max_iter))
    return perms


def _squared_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], keys: Sequence[str]) -> float:
    return float(sum(((a[k].to(torch.float64) - b[k].to(torch.float64)) ** 2).sum() for k in keys))


def merge_many(
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int,
    max_iter: int = 100,
    matching_max_iter: int = 100,
) -> tuple[list[Permutation], int]:
    """Git Re-Basin MergeMany: permutations taking each model into the common frame, and the
    number of rounds run (the module docstring gives the algorithm)."""
    rng = np.random.default_rng(seed)
    sizes = group_sizes(spec, state_dicts[0])
    perms = [identity_permutation(sizes) for _ in state_dicts]
    current = [dict(sd) for sd in state_dicts]
    keys = spec.keys()
    rounds = 0
    for rounds in range(1, max_iter + 1):  # noqa: B007 (its last value is the count reported)
        progress = False
        for index in rng.permutation(len(current)):
            others = average_state_dicts([sd for j, sd in enumerate(current) if j != index])
            before = _squared_distance(others, current[index], keys)
            step = weight_matching(spec, others, current[index], rng=rng, max_iter=matching_max_iter)
            moved = apply_permutation(spec, current[index], step)
            after = _squared_distance(others, moved, keys)
            if after < before - 1e-12:
                current[index] = moved
                perms[index] = compose(perms[index], step)
                progress = True
        if not progress:
            break
    return perms, rounds


def all_pairs_matching(
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int,
    max_iter: int = 100,
) -> dict[tuple[int, int], Permutation]:
    """Independent weight matching of every pair ``a < b`` (``b`` matched to ``a``): ``maps[(a, b)]``
    takes model ``b`` into ``a``'s frame and ``maps[(b, a)]`` is its inverse. These are the
    pairwise maps whose cycles C2M3 compares against (they need not compose to the identity)."""
    rng = np.random.default_rng(seed)
    maps: dict[tuple[int, int], Permutation] = {}
    for a, b in itertools.combinations(range(len(state_dicts)), 2):
        maps[(a, b)] = weight_matching(spec, state_dicts[a], state_dicts[b], rng=rng, max_iter=max_iter)
        maps[(b, a)] = invert(maps[(a, b)])
    return maps
