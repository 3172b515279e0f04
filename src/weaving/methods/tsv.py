"""TSV-Merge (Gargiulo et al., 2025): Task Singular Vectors.

For each 2-D tensor (`m x n`, `r = min(m, n)`): SVD `tau_t = U_t S_t V_t^T`, keep the top
`k = max(1, r // T)` triplets, concatenate `U = [U_1[:, :k] ... U_T[:, :k]]`,
`S = [S_1[:k] ... S_T[:k]]`, `V = [V_1[:, :k] ... V_T[:, :k]]`, orthogonalise with the polar
factor (`U = P Sigma Q^T` thin SVD, `U_perp = P Q^T`; same for `V`) and
`M = U_perp diag(S) V_perp^T`. Every other tensor (0-D, 1-D, 3-D and more): the mean of the
`tau_t`. A 2-D tensor with a zero-size dimension gives zeros. With `T = 1`, `k = r` and the
polar factors of `U_1`, `V_1` are themselves (up to rounding): `M = tau_1`. SVDs by `torch.linalg.svd`
(`full_matrices=False`) in the compute dtype, one task at a time (the same bits as one batched
call; only the kept `k` triplets of each task are held, as in the reference's memory-reduced merge).

As a pooling (`TsvPoolingRun`, a shortcut, issue 14's suggestion): the members `lam_k * M_c` share
`M_c`, and `lam * M = U (|lam| S) (sign(lam) V)^T`, so each merge's SVD is computed once and its
points take `M_c`'s top `k` triplets with the singular values scaled by `|lam_k|` (in the compute
dtype), instead of one SVD per member: `T + C` SVDs a key instead of `T + K`. For `lam` a positive
power of two the scaled factors are bit for bit the SVD of the member (scaling by 2^j commutes with
every rounding), and the result is bit for bit TSV on the materialised members (tested). For other
`lam` they differ from the members' SVDs by rounding (for a negative `lam`, also by which of `U`,
`V` LAPACK negates), and so does the result whenever the concatenated
singular vectors have full rank. With two or more points on one `M_c` they do not: the members are
collinear, `U` and `V` are rank-deficient and their polar factors are undetermined on the null
space, so TSV-as-pooling is not a continuous function of the members (docs/merging.md): the shortcut
and the materialised members (`materialize=True`) are two evaluations of the same ill-posed
formula, each reproducible with the same LAPACK and thread count.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from weaving.methods.base import Members, PerTensorMethod, PoolingRun, PoolingShape


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """`P Q^T` for the thin SVD `a = P Sigma Q^T`: the nearest matrix with orthonormal columns."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


class SvdMemo:
    """Thin SVDs already computed, by the matrix's dtype, shape and the sha256 of its bytes; least
    recently used first out beyond `max_bytes` of factors."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def svd(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        contiguous = matrix.detach().contiguous()
        digest = hashlib.sha256(contiguous.view(-1).view(torch.uint8).cpu().numpy()).digest()
        key = (contiguous.dtype, tuple(contiguous.shape), digest)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        factors = torch.linalg.svd(contiguous, full_matrices=False)
        size = _nbytes(factors)
        if size <= self.max_bytes:
            self._entries[key] = factors
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= _nbytes(evicted)
        return factors


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


_MEMO: ContextVar[SvdMemo | None] = ContextVar("weaving_tsv_svd_memo", default=None)


@contextmanager
def reuse_svds(max_bytes: int = 1 << 30) -> Iterator[SvdMemo]:
    """Within the block, TSV (the method and the pooling) takes the SVD of a matrix it has seen
    before from memory instead of computing it again: the same bits (the same call on the same
    bytes), less time when the same task vectors are merged in several subsets, as the pipeline's
    scenarios do. Off by default: the factors of every key are kept (up to `max_bytes`)."""
    token = _MEMO.set(SvdMemo(max_bytes))
    try:
        yield _MEMO.get()
    finally:
        _MEMO.reset(token)


def top_triplets(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`U[:, :k]`, `S[:k]`, `V^T[:k, :]` of the thin SVD of one `m x n` matrix (copies: the rest is freed)."""
    memo = _MEMO.get()
    u, s, vh = memo.svd(matrix) if memo is not None else torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :k].clone(), s[:k].clone(), vh[:k, :].clone()


def tsv_from_triplets(triplets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`U_perp diag(S) V_perp^T` from each member's kept triplets `(U_t[:, :k], S_t[:k], V_t^T[:k, :])`."""
    u_cat = torch.cat([u for u, _, _ in triplets], dim=1)
    s_cat = torch.cat([s for _, s, _ in triplets])
    v_cat = torch.cat([vh for _, _, vh in triplets], dim=0).T
    return (polar_factor(u_cat) * s_cat) @ polar_factor(v_cat).T


def kept_rank(shape: torch.Size | tuple[int, ...], num_members: int) -> int:
    """`k = max(1, min(m, n) // T)`, the triplets kept per member."""
    return max(1, min(shape) // num_members)


def tsv(taus: torch.Tensor) -> torch.Tensor:
    """TSV-Merge of the stacked task vectors `taus` `[T, *shape]`."""
    if taus.ndim != 3:
        return taus.mean(0)
    num_tasks, m, n = taus.shape
    if min(m, n) == 0:
        return torch.zeros((m, n), dtype=taus.dtype)
    k = kept_rank((m, n), num_tasks)
    return tsv_from_triplets([top_triplets(tau, k) for tau in taus])


class TsvPoolingRun(PoolingRun):
    """TSV as a pooling: each merge's SVD once, its points' triplets scaled by `|lam|` (no passes)."""

    def __init__(self, params: Mapping[str, float | int], shape: PoolingShape) -> None:
        self._shape = shape
        self._tasks = shape.layout.num_tasks if shape.pool_over == "all" else 0

    def next_pass(self) -> str | None:
        return None

    def finalize(self, key: str, members: Members) -> torch.Tensor:
        taus = members.taus
        if taus.ndim != 3 or 0 in taus.shape[1:]:  # no SVD: the method's own rule on the members
            return tsv(members.stacked())
        k = kept_rank(taus.shape[1:], self._shape.num_members)
        triplets = [top_triplets(tau, k) for tau in taus[: self._tasks]]
        of_merge: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for combination, lam in self._shape.points:
            if combination not in of_merge:
                of_merge[combination] = top_triplets(members.merge(combination), k)
            u, s, vh = of_merge[combination]
            scale = torch.tensor(lam, dtype=taus.dtype)  # the materialised member is fl(lam * M_c)
            triplets.append((u, scale.abs() * s, -vh if lam < 0 else vh))
        return tsv_from_triplets(triplets)


METHOD = PerTensorMethod(
    name="tsv",
    summary="low-rank task singular vectors, decorrelated and summed",
    merge_tensor=lambda taus, key: tsv(taus),
    as_pooling=TsvPoolingRun,
)
