"""Iso-C (Marczak et al., 2025): isotropic merging in common subspace.

For each 2-D tensor: `A = sum_t tau_t = U S V^T` (thin SVD, `r = min(m, n)` singular
values), `M = mean(S) * U V^T`, every singular value replaced by their mean (zeros
included). Every other tensor (0-D, 1-D, 3-D and more): the mean of the `tau_t`. A 2-D
tensor with a zero-size dimension gives zeros.

As a pooling: no shortcut (the members' sum is `sum_t tau_t + (sum_k lam_k) * M` only up to
rounding); the members of each key are materialised.
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod


def iso_c(taus: torch.Tensor) -> torch.Tensor:
    """Iso-C merge of the stacked task vectors `taus` `[T, *shape]`."""
    if taus.ndim != 3:
        return taus.mean(0)
    if taus.shape[1] == 0 or taus.shape[2] == 0:
        return torch.zeros(taus.shape[1:], dtype=taus.dtype)
    u, s, vh = torch.linalg.svd(taus.sum(0), full_matrices=False)
    return s.mean() * (u @ vh)


METHOD = PerTensorMethod(
    name="iso_c",
    summary="sum of task vectors with a flattened (isotropic) singular spectrum",
    merge_tensor=lambda taus, key: iso_c(taus),
)
