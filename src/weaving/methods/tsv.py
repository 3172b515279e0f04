"""TSV-Merge (Gargiulo et al., 2025): Task Singular Vectors.

For each 2-D tensor (`m x n`, `r = min(m, n)`): SVD `tau_t = U_t S_t V_t^T`, keep the top
`k = max(1, r // T)` triplets, concatenate `U = [U_1[:, :k] ... U_T[:, :k]]`,
`S = [S_1[:k] ... S_T[:k]]`, `V = [V_1[:, :k] ... V_T[:, :k]]`, orthogonalise with the polar
factor (`U = P Sigma Q^T` thin SVD, `U_perp = P Q^T`; same for `V`) and
`M = U_perp diag(S) V_perp^T`. Every other tensor (0-D, 1-D, 3-D and more): the mean of the
`tau_t`. A 2-D tensor with a zero-size dimension gives zeros. With `T = 1`, `k = r` and the
polar factors of `U_1`, `V_1` are themselves (up to rounding): `M = tau_1`. SVDs by `torch.linalg.svd`
(`full_matrices=False`) in the compute dtype.

As a pooling: no shortcut. With two or more members `lam_k * M` the concatenated singular vectors
are rank-deficient and their polar factors are undetermined on the null space, so the result is not
a continuous function of the members; a shortcut reusing `M`'s SVD would differ from the
materialised members' result by far more than rounding (docs/merging.md). The members of each key
are materialised.
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """`P Q^T` for the thin SVD `a = P Sigma Q^T`: the nearest matrix with orthonormal columns."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv(taus: torch.Tensor) -> torch.Tensor:
    """TSV-Merge of the stacked task vectors `taus` `[T, *shape]`."""
    if taus.ndim != 3:
        return taus.mean(0)
    num_tasks, m, n = taus.shape
    rank = min(m, n)
    if rank == 0:
        return torch.zeros((m, n), dtype=taus.dtype)
    k = max(1, rank // num_tasks)
    u, s, vh = torch.linalg.svd(taus, full_matrices=False)
    u_cat = u[:, :, :k].permute(1, 0, 2).reshape(m, num_tasks * k)
    s_cat = s[:, :k].reshape(num_tasks * k)
    v_cat = vh[:, :k, :].permute(2, 0, 1).reshape(n, num_tasks * k)
    return (polar_factor(u_cat) * s_cat) @ polar_factor(v_cat).T


METHOD = PerTensorMethod(
    name="tsv",
    summary="low-rank task singular vectors, decorrelated and summed",
    merge_tensor=lambda taus, key: tsv(taus),
)
