"""The mergers, one interface: permutations into a common frame, then the uniform mean there.

| name | frame | reference |
| --- | --- | --- |
| ``naive`` | each model as it is (identity permutations) | plain weight averaging |
| ``pairwise`` | the first model's: every other one weight-matched to it | Git Re-Basin pairwise (``GitRebasinPairwiseMerger``) |
| ``mergemany`` | the evolving mean's | Git Re-Basin MergeMany (``GitRebasinMerger``) |
| ``c2m3`` | the universe of synchronised Frank-Wolfe | C2M3 (``FrankWolfeSynchronizedMerger``, ``average_in_universe``) |

The merge is ``mean_X apply_permutation(spec, theta_X, u_X)`` (``weaving.align.permute.universe_average``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from weaving.align.frank_wolfe import frank_wolfe_sync_matching
from weaving.align.matching import all_pairs_matching, match_to_reference, merge_many
from weaving.align.permute import (
    Permutation,
    identity_permutation,
    pairwise_maps_from_frames,
    universe_average,
)
from weaving.align.spec import PermutationSpec, check_models, group_sizes
from weaving.errors import ParamError

__all__ = ["MERGERS", "AlignmentResult", "align", "merge_models", "pairwise_maps_for_cycles"]

MERGERS = ("naive", "pairwise", "mergemany", "c2m3")


@dataclass
class AlignmentResult:
    """``perms[X]`` takes model ``X`` into the merger's common frame; ``info``: JSON-able details
    (C2M3: iterations, objective trace, rounded objective, step sizes; MergeMany: rounds)."""

    method: str
    perms: list[Permutation]
    seconds: float
    info: dict = field(default_factory=dict)


def align(
    method: str,
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int = 0,
    fw_max_iter: int = 200,
    workers: int = 1,
    progress: bool = False,
) -> AlignmentResult:
    """Permutations of every model into ``method``'s common frame (table in the module docstring).

    The models must already satisfy ``check_models(spec, state_dicts)``; ``seed`` drives every
    random choice (group order of weight matching, model order of MergeMany, C2M3's start);
    ``workers``: threads for C2M3's linear assignments (same result for any value)."""
    if method not in MERGERS:
        raise ParamError(f"unknown merger {method!r}; valid: {', '.join(MERGERS)}")
    start = time.perf_counter()
    info: dict = {}
    if method == "naive":
        sizes = group_sizes(spec, state_dicts[0])
        perms = [identity_permutation(sizes) for _ in state_dicts]
    elif method == "pairwise":
        perms = match_to_reference(spec, state_dicts, seed=seed)
    elif method == "mergemany":
        perms, rounds = merge_many(spec, state_dicts, seed=seed)
        info["rounds"] = rounds
    else:
        result = frank_wolfe_sync_matching(spec, state_dicts, seed=seed, max_iter=fw_max_iter, workers=workers,
                                           progress=progress)
        perms = result.perms_to_universe
        info.update({"iterations": result.iterations, "objective_trace": result.objective_trace,
                     "objective_rounded": result.objective_rounded, "step_sizes": result.step_sizes})
    return AlignmentResult(method, perms, time.perf_counter() - start, info)


def merge_models(
    method: str,
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    fw_max_iter: int = 200,
    workers: int = 1,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], AlignmentResult]:
    """Validate (``check_models``: at least 2 models, keys, shapes, finite values; errors name
    the model by ``names``), align with ``method``, and return the uniform mean in the common frame."""
    if method not in MERGERS:
        raise ParamError(f"unknown merger {method!r}; valid: {', '.join(MERGERS)}")
    check_models(spec, state_dicts, names)
    result = align(method, spec, state_dicts, seed=seed, fw_max_iter=fw_max_iter, workers=workers, progress=progress)
    return universe_average(spec, state_dicts, result.perms), result


def pairwise_maps_for_cycles(
    method: str,
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    result: AlignmentResult,
    *,
    seed: int = 0,
) -> dict[tuple[int, int], Permutation]:
    """The pairwise maps a merger implies, whose cycle error is reported (``maps[(a, b)]`` takes
    ``b`` into ``a``'s frame). C2M3 and MergeMany: through their common frame
    (``P_a^T``-style factorisation, consistent by construction). ``pairwise``: each pair matched
    directly by weight matching, the maps the pairwise approach gives between any two models,
    which C2M3's paper contrasts with its own (the reference frame alone would hide them)."""
    if method == "pairwise":
        return all_pairs_matching(spec, state_dicts, seed=seed)
    return pairwise_maps_from_frames(result.perms)
