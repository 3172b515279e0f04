"""Model Breadcrumbs (Davari & Belilovsky, 2024).

Per task vector and tensor, per row along the last dimension (a 1-D tensor is one row; a
0-D tensor is kept whole), with `d` the row length: the `int(d * gamma)` entries of largest
`|x|` become 0 (outliers), of the rest only the `int(d * beta)` of largest `|x|` are kept,
everything else becomes 0. `M = sum_t masked tau_t`.

Ties in `|x|`: entries are ranked by `|x|` descending, equal magnitudes by position (the
earlier entry ranks first), i.e. a stable descending sort; an entry of rank `i` (0-based)
is kept iff `int(d*gamma) <= i < int(d*gamma) + int(d*beta)`.

As a pooling (docs/merging.md, "Merge methods as poolings"): no shortcut; the members of each
key are materialised (per-row ranks of `lam_k * M` equal `M`'s only up to ties that rounding creates).
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod, unit_interval


def breadcrumbs_mask(tau: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """Boolean mask of the kept entries of `tau`, row by row along the last dimension.

    Leading dimensions are batch dimensions, so a stack `[T, ..., d]` of tensors that are at
    least 1-D works in one call.
    """
    if tau.ndim == 0 or tau.numel() == 0:
        return torch.ones_like(tau, dtype=torch.bool)
    d = tau.shape[-1]
    dropped, kept = int(d * gamma), int(d * beta)
    order = torch.sort(tau.abs(), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(d).expand_as(order).contiguous())
    return (rank >= dropped) & (rank < dropped + kept)


def breadcrumbs(taus: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """`M = sum_t tau_t * mask_t` over the stacked task vectors `taus` `[T, *shape]`."""
    if taus.ndim == 1:  # stacked 0-D tensors are kept whole
        return taus.sum(0)
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
