"""Model Breadcrumbs (Davari & Belilovsky, 2024).

Per task vector and tensor, per row along the last dimension (a 1-D tensor is one row; a
0-D tensor is kept whole), with `d` the row length: the `int(d * gamma)` entries of largest
`|x|` become 0 (outliers), of the rest only the `int(d * beta)` of largest `|x|` are kept,
everything else becomes 0. `M = sum_t masked tau_t`.

Ties in `|x|`: entries are ranked by `|x|` descending, equal magnitudes by position (the
earlier entry ranks first), i.e. a stable descending sort (NaN ranks above every number); an
entry of rank `i` (0-based) is kept iff `int(d*gamma) <= i < int(d*gamma) + int(d*beta)`.

Computed by selection, not by sorting the row: with `first(k)` the entries of rank `< k`,
`mask = first(int(d*gamma) + int(d*beta)) & ~first(int(d*gamma))`. For `0 < k < d`, with
`v_1 >= v_2 >= ...` a row's largest magnitudes (one `torch.topk`), `first(k)` is `|x| >= v_k`
when `v_k > v_{k+1}` and the row has no NaN; otherwise (a tie across rank `k`, or a NaN) it is
`|x| > v_k`, plus the entries equal to `v_k` whose count of such entries up to and including
themselves (a cumsum along the row) is at most `k - #{|x| > v_k}`, NaN counting above numbers and
equal to each other. Same bits as the stable sort.

As a pooling (docs/merging.md, "Merge methods as poolings"): no shortcut; the members of each
key are materialised (per-row ranks of `lam_k * M` equal `M`'s only up to ties that rounding creates).
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod, stack_column_chunks, unit_interval


def _first(a: torch.Tensor, top: torch.Tensor, k: int, *, exact: bool) -> torch.Tensor:
    """The entries of rank `< k` in each row of `a` `[rows, d]`, given `top`, each row's largest
    values in descending order (`k + 1` of them at least when `0 < k < d`). `exact=False`: the rows
    are known to have no NaN and no tie across rank `k`."""
    if k in (0, a.shape[-1]):
        return torch.full_like(a, k > 0, dtype=torch.bool)
    v = top[:, k - 1 : k]
    if not exact:
        return a >= v
    nan, v_nan = a.isnan(), v.isnan()
    above = (a > v) | (nan & ~v_nan)
    at = (a == v) | (nan & v_nan)
    return above | (at & (at.cumsum(-1) <= k - above.sum(-1, keepdim=True)))


def breadcrumbs_mask(tau: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """Boolean mask of the kept entries of `tau`, row by row along the last dimension.

    Leading dimensions are batch dimensions, so a stack `[T, ..., d]` of tensors that are at
    least 1-D works in one call.
    """
    if tau.ndim == 0 or tau.numel() == 0:
        return torch.ones_like(tau, dtype=torch.bool)
    d = tau.shape[-1]
    dropped = int(d * gamma)
    end = min(dropped + int(d * beta), d)
    bounds = [k for k in (dropped, end) if 0 < k < d]
    if not bounds:  # no rank boundary inside the row: every entry kept, or none
        return torch.full_like(tau, end > dropped, dtype=torch.bool)
    a = tau.abs().reshape(-1, d)
    top = a.topk(max(bounds) + 1, dim=-1).values  # descending, NaN first
    mask = _first(a, top, end, exact=False) & ~_first(a, top, dropped, exact=False)
    inexact = top[:, 0].isnan()
    for k in bounds:
        inexact |= top[:, k - 1] == top[:, k]
    rows = inexact.nonzero().squeeze(1)
    if len(rows):
        a, top = a[rows], top[rows]
        mask[rows] = _first(a, top, end, exact=True) & ~_first(a, top, dropped, exact=True)
    return mask.reshape(tau.shape)


def breadcrumbs(taus: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """`M = sum_t tau_t * mask_t` over the stacked task vectors `taus` `[T, *shape]`.

    A large key is worked on in chunks of whole rows (`column_chunks`; the mask is per row, the
    sum per column): the same bits with chunk-sized scratch.
    """
    if taus.ndim == 1:  # stacked 0-D tensors are kept whole
        return taus.sum(0)
    d = taus.shape[-1]
    chunks = stack_column_chunks(taus, row=d)
    if chunks is None:
        return _masked_sum(taus, beta=beta, gamma=gamma)
    flat = taus.reshape(taus.shape[0], -1)
    merged = torch.empty(flat.shape[1], dtype=taus.dtype)
    for a, b in chunks:
        merged[a:b] = _masked_sum(flat[:, a:b].view(taus.shape[0], -1, d), beta=beta, gamma=gamma).view(-1)
    return merged.view(taus.shape[1:])


def _masked_sum(taus: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    mask = breadcrumbs_mask(taus, beta=beta, gamma=gamma)
    return torch.where(mask, taus, torch.zeros((), dtype=taus.dtype)).sum(0)


METHOD = PerTensorMethod(
    name="breadcrumbs",
    summary="per row, drop the largest outliers and keep the next largest fraction, then sum",
    hparams=(
        unit_interval("beta", 0.1, help="fraction of each row kept"),
        unit_interval("gamma", 0.01, help="fraction of each row dropped as outliers"),
    ),
    merge_tensor=lambda taus, key, beta, gamma: breadcrumbs(taus, beta=beta, gamma=gamma),
)
