"""TSV-C: task vectors compressed to their top task singular vectors (Gargiulo et al., CVPR 2025).

For every 2-D floating tensor of a task vector, `tau = U S V^T` (thin SVD, `m x n`,
`r = min(m, n)`), TSV-C keeps the top `k = max(1, int(r * f))` triplets: `U[:, :k]`
(`m x k`), `S[:k]` and `V^T[:k, :]` (`k x n`, stored as the rows of `V^T`, the reference's
`v`). `f` is the rank fraction, `1/T` by default for `T` tasks, as the reference
(`AntoAndGar/task_singular_vectors`, `src/utils/TSVC_utils.py`: `int(s.shape[0] * 1/T)`).
Every other tensor (0-D, 1-D, 3-D and more) and every key containing `text_projection`
(as in the reference) is stored dense. The reconstruction `U[:, :k] diag(S[:k]) V^T[:k, :]`
is the best rank-`k` approximation (Eckart-Young): its Frobenius error is
`sqrt(sum_{i > k} s_i^2)`.

TSV-Merge from the factors (`tsv_merge_compressed`) concatenates the kept triplets of the
tasks, `U = [U_1 ... U_T]`, `S = [S_1 ... S_T]`, `V = [V_1 ... V_T]`, replaces `U` and `V`
by their polar factors (`A = P Sigma Q^T` thin SVD -> `P Q^T`) and gives
`M = U_perp diag(S) V_perp^T`; dense tensors are merged as `weaving.methods.tsv` merges
them (mean of 0-D/1-D/3-D+, its SVD rule for 2-D). With `f = 1/T` this is exactly the
project's `merge("tsv", taus)` (`docs/merging.md`); with any `f` it is how MASS
(`crisostomi/mass`, `sum_svd`) merges a selected subset of compressed task vectors.

SVDs run in float32 (float64 for float64 tensors), a wide matrix through its transpose
(`A^T = V S U^T`, about 3x faster in LAPACK for ViT-B's `768 x 3072` MLP projections);
factors are stored in each key's dtype.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from weaving.errors import InputError, ParamError
from weaving.methods.tsv import tsv, tsv_from_triplets

__all__ = [
    "TEXT_PROJECTION",
    "CompressedTaskVector",
    "Factors",
    "check_compatible",
    "check_rank_fraction",
    "compress_task_vector",
    "compress_task_vectors",
    "default_rank_fraction",
    "is_factored",
    "rank_for",
    "storage_summary",
    "tsv_merge_compressed",
]

TEXT_PROJECTION = "text_projection"
"""Keys containing this stay dense (the reference's rule, for CLIP's text projection)."""


def check_rank_fraction(rank_fraction: object, what: str = "rank_fraction") -> float:
    """`rank_fraction` as a float in (0, 1], else `ParamError` naming `what`."""
    if isinstance(rank_fraction, bool) or not isinstance(rank_fraction, numbers.Real):
        raise ParamError(f"{what} must be a number in (0, 1], got {rank_fraction!r}")
    value = float(rank_fraction)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ParamError(f"{what} must be in (0, 1] (a fraction of each layer's rank), got {rank_fraction!r}")
    return value


def default_rank_fraction(num_tasks: int) -> float:
    """`1 / T`, the reference's rank fraction for `T` tasks (each task keeps `r / T` triplets)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
        raise ParamError(f"the number of tasks must be a positive integer, got {num_tasks!r}")
    return 1.0 / int(num_tasks)


def rank_for(shape: Sequence[int], rank_fraction: float) -> int:
    """`k = max(1, int(min(m, n) * f))` for a 2-D `shape` (the reference's `int(r * f)`, at least 1)."""
    if len(shape) != 2:
        raise ValueError(f"rank_for needs a 2-D shape, got {tuple(shape)}")
    return max(1, int(min(shape) * rank_fraction))


def is_factored(key: str, shape: Sequence[int], dtype: torch.dtype) -> bool:
    """Whether TSV-C stores `key` as factors: a non-empty 2-D float tensor not named `*text_projection*`."""
    return len(shape) == 2 and min(shape) > 0 and dtype.is_floating_point and TEXT_PROJECTION not in key


@dataclass(frozen=True)
class Factors:
    """The kept triplets of one 2-D tensor: `u` `[m, k]`, `s` `[k]`, `vh` `[k, n]` (rows of `V^T`)."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    def __post_init__(self) -> None:
        k = self.u.shape[1]
        if self.s.shape != (k,) or self.vh.ndim != 2 or self.vh.shape[0] != k:
            raise InputError(
                f"inconsistent factors: u {tuple(self.u.shape)}, s {tuple(self.s.shape)}, vh {tuple(self.vh.shape)}"
            )

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.u.shape[0]), int(self.vh.shape[1])

    def numbers(self) -> int:
        """Stored numbers: `k (m + n + 1)`."""
        m, n = self.shape
        return self.rank * (m + n + 1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.u, self.s, self.vh))

    def reconstruct(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`u diag(s) vh`, computed in float32 (float64 for float64 factors), cast to `dtype` (the factors' by default)."""
        work = torch.float64 if self.u.dtype == torch.float64 else torch.float32
        out = (self.u.to(work) * self.s.to(work)) @ self.vh.to(work)
        return out.to(dtype or self.u.dtype)

    def truncated(self, rank: int) -> Factors:
        """The top `rank` triplets (they are stored in decreasing order of singular value)."""
        if not 1 <= rank <= self.rank:
            raise ParamError(f"cannot keep {rank} triplets of factors holding {self.rank}")
        return Factors(self.u[:, :rank].clone(), self.s[:rank].clone(), self.vh[:rank, :].clone())


@dataclass
class CompressedTaskVector:
    """A TSV-C compressed task vector.

    `factors`: key -> `Factors` for the factored keys; `dense`: key -> tensor for the others.
    `rank_fraction` is `f`; `name`, `pretrained_sha256` (the checkpoint the task vector was
    taken against) and `source_sha256` (the fine-tuned checkpoint) are provenance, saved
    with the file. Every key's dtype is the dtype of its stored tensors.
    """

    factors: dict[str, Factors]
    dense: dict[str, torch.Tensor]
    rank_fraction: float
    name: str = ""
    pretrained_sha256: str | None = None
    source_sha256: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.factors) & set(self.dense)
        if both:
            raise InputError(f"{self.label}: keys both factored and dense: {sorted(both)[:5]}")

    @property
    def label(self) -> str:
        return self.name or "compressed task vector"

    def keys(self) -> list[str]:
        return sorted([*self.factors, *self.dense])

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self.factors:
            return self.factors[key].shape
        if key in self.dense:
            return tuple(self.dense[key].shape)
        raise InputError(f"{self.label}: no key {key!r}")

    def dtype(self, key: str) -> torch.dtype:
        if key in self.factors:
            return self.factors[key].u.dtype
        if key in self.dense:
            return self.dense[key].dtype
        raise InputError(f"{self.label}: no key {key!r}")

    def ranks(self) -> dict[str, int]:
        """Kept triplets per factored key."""
        return {key: self.factors[key].rank for key in sorted(self.factors)}

    def reconstruct(self, key: str) -> torch.Tensor:
        """The dense task-vector tensor of `key` (factored keys: `U diag(S) V^T`), in the key's dtype."""
        if key in self.factors:
            return self.factors[key].reconstruct()
        if key in self.dense:
            return self.dense[key]
        raise InputError(f"{self.label}: no key {key!r}")

    def to_dense(self) -> dict[str, torch.Tensor]:
        """The reconstructed task vector (keys sorted): the input of `merge`, `apply_task_vector`."""
        return {key: self.reconstruct(key) for key in self.keys()}

    def stored_numbers(self) -> int:
        """Numbers stored: `sum k (m + n + 1)` over factored keys plus every dense tensor's size."""
        return sum(f.numbers() for f in self.factors.values()) + sum(t.numel() for t in self.dense.values())

    def stored_bytes(self) -> int:
        """Bytes of tensor data stored (each tensor's size times its element size; no file header)."""
        return sum(f.nbytes() for f in self.factors.values()) + sum(
            t.numel() * t.element_size() for t in self.dense.values()
        )

    def dense_numbers(self) -> int:
        """Numbers of the uncompressed task vector (= one model's floating parameters)."""
        return sum(math.prod(self.shape(key)) for key in self.keys())

    def dense_bytes(self) -> int:
        return sum(math.prod(self.shape(key)) * self.dtype(key).itemsize for key in self.keys())

    def truncated(self, rank_fraction: float) -> CompressedTaskVector:
        """The same task vector at a smaller rank fraction: each key keeps its top `rank_for(shape, f)` triplets.

        Equals compressing the original task vector at `f` (the SVD's top triplets are nested),
        so one full-rank SVD (`f = 1`) serves a whole sweep of fractions.
        """
        rank_fraction = check_rank_fraction(rank_fraction)
        factors = {}
        for key, kept in self.factors.items():
            rank = rank_for(kept.shape, rank_fraction)
            if rank > kept.rank:
                raise ParamError(
                    f"{self.label}: rank fraction {rank_fraction:g} needs {rank} triplets of {key!r}, "
                    f"which holds only {kept.rank} (rank fraction {self.rank_fraction:g}); recompress"
                )
            factors[key] = kept.truncated(rank)
        return CompressedTaskVector(factors, dict(self.dense), rank_fraction, self.name, self.pretrained_sha256,
                                    self.source_sha256, dict(self.extra))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_task_vector(tau: Mapping[str, torch.Tensor], name: str) -> None:
    if not isinstance(tau, Mapping):
        raise InputError(f"{name}: expected a dict of tensors (a task vector), got {type(tau).__name__}")
    if not tau:
        raise InputError(f"{name}: the task vector holds no tensors")
    for key, value in tau.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{name}: entry {key!r} is not a tensor")
        if not value.dtype.is_floating_point:
            raise InputError(f"{name}: key {key!r} has dtype {value.dtype}; task vectors hold floating tensors only")
        if "::" in key:
            raise InputError(f"{name}: key {key!r} contains '::', which the compressed file format reserves")
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{name}: key {key!r} contains NaN or inf")


def compress_tensor(key: str, tensor: torch.Tensor, rank_fraction: float) -> Factors | torch.Tensor:
    """`Factors` (top `rank_for` triplets of the thin SVD) for a factored key, else the tensor itself."""
    if not is_factored(key, tuple(tensor.shape), tensor.dtype):
        return tensor
    work = tensor.to(_work_dtype(tensor.dtype))
    if work.shape[0] < work.shape[1]:  # LAPACK is ~3x faster on the tall transpose: A^T = V S U^T
        v, s, uh = torch.linalg.svd(work.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
    rank = rank_for(tuple(tensor.shape), rank_fraction)
    return Factors(u[:, :rank].to(tensor.dtype).contiguous(), s[:rank].to(tensor.dtype).contiguous(),
                   vh[:rank, :].to(tensor.dtype).contiguous())


def compress_task_vector(
    tau: Mapping[str, torch.Tensor],
    rank_fraction: float,
    *,
    name: str = "",
    pretrained_sha256: str | None = None,
    source_sha256: str | None = None,
    progress: bool = False,
) -> CompressedTaskVector:
    """TSV-C of one task vector at rank fraction `f` in (0, 1] (see the module docstring)."""
    rank_fraction = check_rank_fraction(rank_fraction)
    _check_task_vector(tau, name or "task vector")
    factors: dict[str, Factors] = {}
    dense: dict[str, torch.Tensor] = {}
    keys = sorted(tau)
    for key in tqdm(keys, desc=f"TSV-C {name}".strip(), unit="key", disable=not progress, file=sys.stderr):
        kept = compress_tensor(key, tau[key], rank_fraction)
        if isinstance(kept, Factors):
            factors[key] = kept
        else:
            dense[key] = kept.detach().clone()
    return CompressedTaskVector(factors, dense, rank_fraction, name, pretrained_sha256, source_sha256)


def compress_task_vectors(
    taus: Sequence[Mapping[str, torch.Tensor]],
    rank_fraction: float | None = None,
    *,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> list[CompressedTaskVector]:
    """TSV-C of `T` task vectors of the same layout; `rank_fraction=None` means `1/T`."""
    if isinstance(taus, Mapping) or not isinstance(taus, Sequence):
        raise ParamError(f"expected a list of task vectors, got {type(taus).__name__}")
    if not taus:
        raise ParamError("the task list is empty: compress needs at least one task vector")
    fraction = default_rank_fraction(len(taus)) if rank_fraction is None else check_rank_fraction(rank_fraction)
    names = [f"task {i}" for i in range(len(taus))] if names is None else list(names)
    if len(names) != len(taus):
        raise ParamError(f"got {len(names)} names for {len(taus)} task vectors")
    for tau, name in zip(taus, names):
        _check_task_vector(tau, name)
    reference = taus[0]
    for tau, name in zip(taus[1:], names[1:]):
        _check_same_tensors(names[0], {k: (tuple(v.shape), v.dtype) for k, v in reference.items()},
                            name, {k: (tuple(v.shape), v.dtype) for k, v in tau.items()})
    return [compress_task_vector(tau, fraction, name=name, progress=progress) for tau, name in zip(taus, names)]


def _listing(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return (shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")) or "(none)"


def _check_same_tensors(
    reference_name: str,
    reference: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    other_name: str,
    other: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
) -> None:
    if set(other) != set(reference):
        raise InputError(
            f"{other_name}: key set differs from {reference_name}: missing {_listing(set(reference) - set(other))}; "
            f"extra {_listing(set(other) - set(reference))}"
        )
    for key in sorted(reference):
        if tuple(other[key][0]) != tuple(reference[key][0]) or other[key][1] != reference[key][1]:
            raise InputError(
                f"{other_name}: key {key!r} is {tuple(other[key][0])} {other[key][1]}, "
                f"{reference_name} has {tuple(reference[key][0])} {reference[key][1]}"
            )


def check_compatible(compressed: Sequence[CompressedTaskVector]) -> None:
    """Same keys, shapes, dtypes, factored/dense split and pretrained checkpoint, else `InputError`.

    An empty list is a `ParamError` (no task to merge or route).
    """
    if isinstance(compressed, CompressedTaskVector) or not isinstance(compressed, Sequence):
        raise ParamError(f"expected a list of compressed task vectors, got {type(compressed).__name__}")
    if not compressed:
        raise ParamError("the task list is empty: give at least one compressed task vector")
    for i, item in enumerate(compressed):
        if not isinstance(item, CompressedTaskVector):
            raise ParamError(f"item {i} is a {type(item).__name__}, not a CompressedTaskVector")
    first = compressed[0]
    specs = {key: (first.shape(key), first.dtype(key)) for key in sorted(first.keys())}
    for other in compressed[1:]:
        _check_same_tensors(first.label, specs, other.label,
                            {key: (other.shape(key), other.dtype(key)) for key in sorted(other.keys())})
        if set(other.factors) != set(first.factors):
            raise InputError(
                f"{other.label}: factored keys differ from {first.label}'s: "
                f"{_listing(set(other.factors) ^ set(first.factors))}"
            )
        if first.pretrained_sha256 and other.pretrained_sha256 and first.pretrained_sha256 != other.pretrained_sha256:
            raise InputError(
                f"{other.label}: made against pretrained sha256 {other.pretrained_sha256}, "
                f"{first.label} against {first.pretrained_sha256}; compress every task against the same checkpoint"
            )


def tsv_merge_compressed(compressed: Sequence[CompressedTaskVector], lam: float = 1.0) -> dict[str, torch.Tensor]:
    """TSV-Merge of compressed task vectors from their factors, times `lam` (keys sorted, each key's dtype).

    Factored keys: `M = polar(U) diag(S) polar(V)^T` over the concatenated kept triplets of
    every task (`polar(A) = P Q^T` for the thin SVD `A = P Sigma Q^T`). Dense keys: the
    project's `tsv` rule on the stacked tensors (the mean for 0-D/1-D/3-D+). A single task
    gives exactly its reconstruction (its `U`, `V` are already orthonormal). With the task
    vectors compressed at `f = 1/T`, this equals `merge("tsv", taus)`.
    """
    check_compatible(compressed)
    lam_value = float(lam)
    if not math.isfinite(lam_value):
        raise ParamError(f"lam must be finite, got {lam!r}")
    first = compressed[0]
    keys = first.keys()
    work = torch.float64 if any(first.dtype(k) == torch.float64 for k in keys) else torch.float32
    merged: dict[str, torch.Tensor] = {}
    for key in keys:
        dtype = first.dtype(key)
        if len(compressed) == 1:
            result = first.reconstruct(key).to(work)
        elif key in first.factors:
            result = tsv_from_triplets([(p.u.to(work), p.s.to(work), p.vh.to(work))
                                        for p in (c.factors[key] for c in compressed)])
        else:
            result = tsv(torch.stack([c.dense[key].to(work) for c in compressed]))
        merged[key] = (lam_value * result).to(dtype) if lam_value != 1.0 else result.to(dtype)
    return merged


def storage_summary(compressed: Sequence[CompressedTaskVector]) -> dict[str, float | int]:
    """Stored numbers and bytes of `T` compressed task vectors against one model and against `T` models.

    `one_model_numbers` is the size of one uncompressed task vector (= one model's floating
    parameters); the ratios are stored numbers over `one_model_numbers` and over `T` times it.
    """
    check_compatible(compressed)
    numbers_stored = sum(c.stored_numbers() for c in compressed)
    bytes_stored = sum(c.stored_bytes() for c in compressed)
    one_numbers = compressed[0].dense_numbers()
    one_bytes = compressed[0].dense_bytes()
    count = len(compressed)
    return {
        "num_tasks": count,
        "stored_numbers": numbers_stored,
        "stored_bytes": bytes_stored,
        "one_model_numbers": one_numbers,
        "one_model_bytes": one_bytes,
        "ratio_to_one_model": numbers_stored / one_numbers if one_numbers else float("nan"),
        "ratio_to_all_models": numbers_stored / (count * one_numbers) if one_numbers else float("nan"),
    }
