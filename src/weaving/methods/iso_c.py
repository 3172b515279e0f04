"""Iso-C (Marczak et al., 2025): isotropic merging in common subspace.

For each 2-D tensor: `A = sum_t tau_t = U S V^T` (thin SVD, `r = min(m, n)` singular
values), `M = mean(S) * U V^T`, every singular value replaced by their mean (zeros
included). Every other tensor (0-D, 1-D, 3-D and more): the mean of the `tau_t`. A 2-D
tensor with a zero-size dimension gives zeros. Both `A` and the mean's sum are summed left to
right in the compute dtype (`base.running_sum`, as Task Arithmetic); the mean is that sum
divided by `T`.

As a pooling: no shortcut (the members' sum is `sum_t tau_t + (sum_k lam_k) * M` only up to
rounding); the members of each key are materialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.methods.base import PerTensorMethod, running_sum


def iso_c(taus: torch.Tensor) -> torch.Tensor:
    """Iso-C merge of the stacked task vectors `taus` `[T, *shape]` (the bits of
    `iso_c_rows(taus.unbind(0))`)."""
    if taus.shape[0] == 0:
        return taus.mean(0) if taus.ndim != 3 else torch.zeros(taus.shape[1:], dtype=taus.dtype)
    return iso_c_rows(taus.unbind(0))


def iso_c_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C merge of the `T >= 1` task vectors of one key, unstacked."""
    first = rows[0]
    if first.ndim != 2:
        return running_sum(rows).div_(len(rows))
    if first.shape[0] == 0 or first.shape[1] == 0:
        return torch.zeros(first.shape, dtype=first.dtype)
    u, s, vh = torch.linalg.svd(running_sum(rows), full_matrices=False)
    return s.mean() * (u @ vh)


METHOD = PerTensorMethod(
    name="iso_c",
    summary="sum of task vectors with a flattened (isotropic) singular spectrum",
    merge_tensor=lambda taus, key: iso_c(taus),
    merge_rows=iso_c_rows,
)
