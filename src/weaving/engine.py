"""The public merge API over state dicts in memory: task vectors, `merge`, `weave`.

Each function validates its request once (`weaving.request.validate_request`), wraps its
dicts in `DictSource`s (`weaving.sources`) and runs the streaming core
(`weaving.streaming`), the same code path that `stream_merge` runs over files. The names
users imported from here before the split (`StateDictSource`, `DictSource`, `TensorDict`,
`compute_dtype`, `stream_merge`) are re-exported, with the request types.

Numerics: every float tensor is computed in one compute dtype for the whole model,
float64 if any floating tensor is float64, else float32; results are cast back to each
key's own dtype. Task vectors cover floating-point tensors only (integer and bool buffers
come from the pretrained model unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from weaving.errors import InputError
from weaving.request import MergeRequest, WeaveSpec, Wording, validate_request
from weaving.sources import (
    DictSource,
    StateDictSource,
    TensorDict,
    check_finite,
    check_same_layout,
    check_sources,
    compute_dtype,
    float_layout,
    listing,
    tau_sources,
)
from weaving.streaming import DifferenceStack, stream_merge, stream_request, stream_taus

__all__ = [
    "DictSource",
    "MergeRequest",
    "StateDictSource",
    "TensorDict",
    "WeaveSpec",
    "Wording",
    "apply_task_vector",
    "compute_dtype",
    "merge",
    "stream_merge",
    "stream_request",
    "task_vectors",
    "validate_request",
    "weave",
    "weave_from_merged",
]


def _collect(sources: Sequence[DictSource], results: Iterator[tuple[str, torch.Tensor]]) -> TensorDict:
    return {key: value.to(sources[0].spec(key)[1]) for key, value in results}


def task_vectors(pretrained_sd: Mapping[str, torch.Tensor], finetuned_sds: Sequence[Mapping[str, torch.Tensor]]) -> list[TensorDict]:
    """`tau_t = theta_t - theta_pre` for every floating tensor (computed in the compute dtype,
    stored in the key's dtype); integer and bool buffers are left out."""
    pretrained = DictSource(pretrained_sd, name="pretrained state dict")
    if isinstance(finetuned_sds, Mapping):
        raise InputError("finetuned_sds must be a list of state dicts, got a single dict")
    finetuned = check_sources(
        [DictSource(sd, name=f"fine-tuned state dict {i}") for i, sd in enumerate(finetuned_sds)], "fine-tuned state dict"
    )
    check_same_layout(pretrained, finetuned)
    layout = float_layout(pretrained, len(finetuned))
    stack = DifferenceStack(layout, pretrained, finetuned)
    taus: list[TensorDict] = [{} for _ in finetuned]
    for key in layout.keys:
        stacked = stack.load(key)
        dtype = pretrained.spec(key)[1]
        for t, tau in enumerate(taus):
            tau[key] = stacked[t].to(dtype, copy=True)
    return taus


def apply_task_vector(pretrained_sd: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor]) -> TensorDict:
    """`theta_pre + tau` for the floating keys (in the compute dtype, cast back); every
    other key is pretrained's tensor. `tau` must hold exactly pretrained's floating keys."""
    pretrained = DictSource(pretrained_sd, name="pretrained state dict")
    vector = DictSource(tau, name="task vector")
    layout = float_layout(pretrained, 1)
    float_keys, tau_keys = set(layout.keys), set(vector.keys())
    if tau_keys != float_keys:
        missing, extra = float_keys - tau_keys, tau_keys - float_keys
        raise InputError(
            f"task vector: keys differ from the pretrained floating keys: "
            f"missing {listing(missing) or '(none)'}; extra {listing(extra) or '(none)'}"
        )
    for key in layout.keys:
        shape, dtype = vector.spec(key)
        want_shape, want_dtype = pretrained.spec(key)
        if tuple(shape) != tuple(want_shape) or dtype != want_dtype:
            raise InputError(
                f"task vector: key {key!r} is {tuple(shape)} {dtype}, pretrained has {tuple(want_shape)} {want_dtype}"
            )
    out: TensorDict = {}
    for key in pretrained.keys():
        base = pretrained.load(key)
        if key in float_keys:
            check_finite(base, pretrained, key)
            delta = vector.load(key)
            check_finite(delta, vector, key)
            out[key] = (base.to(layout.compute_dtype) + delta.to(layout.compute_dtype)).to(base.dtype)
        else:
            out[key] = base
    return out


def merge(
    method: str,
    taus: Sequence[Mapping[str, torch.Tensor]],
    lam: float = 1.0,
    *,
    seed: int = 0,
    progress: bool = False,
    **hparams: object,
) -> TensorDict:
    """The merged task vector `f(taus, lam) = lam * f(taus, 1)` (keys sorted, dtypes kept).

    `seed` seeds the method's randomness (DARE); deterministic methods ignore it.
    """
    request = validate_request(method, lam=lam, seed=seed, hparams=hparams)
    sources = tau_sources(taus)
    return _collect(sources, stream_taus(sources, request, progress=progress))


def weave(
    method: str,
    taus: Sequence[Mapping[str, torch.Tensor]],
    lambdas: Sequence[float] | None = None,
    pooling: str = "avg",
    pool_over: str = "all",
    seed: int = 0,
    *,
    space: Mapping[str, object] | Sequence[Mapping[str, object]] | None = None,
    pooling_params: Mapping[str, object] | None = None,
    materialize: bool = False,
    progress: bool = False,
    method_seed: int | None = None,
    **hparams: object,
) -> TensorDict:
    """Weight Weaving: the pooled task vector over `taus` and `lam_k * f(taus, 1)`.

    `seed` is the pooling seed and DARE's seed unless `method_seed` is given.
    `materialize=True` runs Algorithm 1 as written (every member built, then pooled).
    `space` sweeps the method's hyper-parameters too (docs/merging.md, "Search spaces over
    hyper-parameters"): a grid such as `{"density": [0.1, 0.2]}` (crossed with `lambdas`, or
    with a `"lam"` axis instead of `lambdas`), or a list of points such as
    `[{"lam": 0.5, "density": 0.1}, ...]`; members are `lam * f(taus, 1, **point)`, one merge
    per distinct non-lam combination. A swept hyper-parameter may not also be given in `hparams`.
    `pooling` may name a merge method (docs/merging.md, "Merge methods as poolings"): the members
    are merged by it at lam 1, at its hyper-parameters `pooling_params` (e.g. `pooling="ties",
    pooling_params={"density": 0.2}`); `materialize=True` then skips the method's shortcut.
    """
    request = validate_request(
        method, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed,
        materialize=materialize, method_seed=method_seed, hparams=hparams, space=space,
        pooling_params=pooling_params,
    )
    sources = tau_sources(taus)
    return _collect(sources, stream_taus(sources, request, progress=progress))


def weave_from_merged(
    taus: Sequence[Mapping[str, torch.Tensor]],
    merged: Mapping[str, torch.Tensor],
    lambdas: Sequence[float],
    pooling: str = "avg",
    pool_over: str = "all",
    seed: int = 0,
    *,
    pooling_params: Mapping[str, object] | None = None,
    materialize: bool = False,
    progress: bool = False,
) -> TensorDict:
    """Weight Weaving from a merged task vector `merged = merge(method, taus, lam=1)`."""
    request = validate_request(
        None, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed, materialize=materialize,
        pooling_params=pooling_params,
    )
    sources = tau_sources(taus)
    merged_source = DictSource(merged, name="merged task vector")
    check_same_layout(sources[0], [merged_source])
    return _collect(sources, stream_taus(sources, request, progress=progress, merged=merged_source))
