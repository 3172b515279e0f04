"""TIES-Merging (Yadav et al., 2023), over the model-wide flattened task vectors.

Every task vector is one row over all its floating tensors (keys sorted): a `T x D` matrix.
1. Trim: per row keep `|x| >= kth`, `kth` the `(D - k)`-th smallest `|x|` of the row
   (1-based, as `torch.kthvalue`), `k = int(D * density)`; the rest become 0.
2. Elect: `s = sign(sum over rows of the trimmed matrix)`; where `s == 0` it becomes the
   majority sign `sign(sum(s))` (the sum over all `D` columns, before filling).
3. Disjoint mean: per column, the mean of the trimmed entries of sign `s` (zeros never
   count); a column with none gives 0.

Choices where the spec is silent: `D - k < 1` (density 1) keeps everything; `k = 0` keeps
the entries equal to the row maximum (rank `D - 1`), as `torch.kthvalue(D)` would; if the
majority sign is itself 0 the columns with `s == 0` give 0; `D = 0` gives empty results.
A 0-D tensor is one column, a tensor with a zero-size dimension none; `T = 1` needs no
special case (one row: the trim of that task vector).

Streaming: `kth` per row is an exact order statistic of `|x|` (`weaving.quantile`: a
radix select, one pass per 16 bits of the compute dtype, or a one-pass tail selection when
`density` is small), then each key is finalised. The majority sign is only needed where a
column's signs cancel exactly; the first key that has such a column triggers one more pass
summing the column signs `sign(sum_t trimmed)` over the model.

As a pooling (`TiesPoolingRun`, a shortcut, exact): the members `lam_k * M_c` share `M_c`, and
`x -> fl(|lam| * x)` is non-decreasing, so the threshold of the member `lam_k * M_c` (an order
statistic of `|lam_k * M_c| = fl(|lam_k| * |M_c|)`) is `fl(|lam_k| * kth(M_c))` exactly. The
statistics passes therefore select over T + C rows (the taus per `pool_over`, and each merge
once) instead of T + K; the majority-sign pass and the finalisation then run on the members of
each key, built one key at a time. The result is the same, bit for bit, as TIES run on the
materialised members.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from weaving.methods.base import (
    Members,
    MethodRun,
    ModelLayout,
    ModelWideMethod,
    PassNeeded,
    PoolingRun,
    PoolingShape,
    Workspace,
    stack_column_chunks,
    unit_interval,
)
from weaving.quantile import order_statistics


def ties_trim_rank(total: int, density: float) -> int | None:
    """0-based rank of `kth` in a row of `total` magnitudes, or None to keep everything."""
    kept = int(total * density)
    return None if total - kept < 1 else total - kept - 1


def ties_trim(taus: torch.Tensor, thresholds: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Entries of `taus` `[T, *shape]` with `|x| >= thresholds[t]` (None: all), others 0.

    Dropped negative entries become -0.0 (equal to 0 everywhere below). `out` (same shape
    and dtype) avoids an allocation; with `thresholds` None `taus` itself is returned.
    """
    if thresholds is None:
        return taus
    threshold = thresholds.view(-1, *([1] * (taus.ndim - 1)))
    trimmed = torch.abs(taus, out=out) if out is not None else taus.abs()
    return trimmed.ge_(threshold).mul_(taus)


def ties_column_sign_total(trimmed: torch.Tensor) -> int:
    """`sum(sign(sum_t trimmed_t))` over the columns of one key (exact, integer)."""
    return int(torch.sign(trimmed.sum(0)).to(torch.int64).sum())


def ties_needs_majority(trimmed: torch.Tensor, elected: torch.Tensor) -> bool:
    """Whether some column's signs cancel exactly (`s == 0` with a nonzero entry)."""
    tied = (elected == 0).reshape(-1)
    return bool(tied.any()) and bool(trimmed.reshape(trimmed.shape[0], -1)[:, tied].ne(0).any())


def ties_disjoint_mean(trimmed: torch.Tensor, elected: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per column, the mean of the entries of sign `elected` (zeros never count; none: 0).

    `|x|` of the agreeing entries is `max(x * s, 0)`; their sum times `s` is their sum.
    `scratch` (same shape and dtype as `trimmed`) avoids an allocation.
    """
    agreeing = torch.mul(trimmed, elected, out=scratch) if scratch is not None else trimmed * elected
    agreeing.clamp_(min=0)
    total = agreeing.sum(0).mul_(elected)
    count = agreeing.sign_().sum(0)
    return total.div_(count.clamp_(min=1))


def ties_elect_mean(trimmed: torch.Tensor, majority_sign: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Elect the sign per column (0 -> `majority_sign`) and average the agreeing entries."""
    elected = torch.sign(trimmed.sum(0))
    elected[elected == 0] = float(majority_sign)
    return ties_disjoint_mean(trimmed, elected, scratch)


class TiesRun(MethodRun):
    """Statistics passes for `kth` (exact order statistics), then per-key finalisation.

    The majority-sign pass runs only if some key has a column whose signs cancel exactly
    (`PassNeeded`); elsewhere the majority sign changes nothing.
    """

    def __init__(self, layout: ModelLayout, *, density: float, thresholds: torch.Tensor | None = None) -> None:
        """`thresholds` (`[T]`): the trim thresholds, known already (no selection pass)."""
        total = layout.total_numel
        rank = ties_trim_rank(total, density)
        self._rows = layout.num_tasks
        selecting = thresholds is None and rank is not None and total > 0
        self._select = order_statistics([[rank]] * self._rows, layout.compute_dtype, total) if selecting else None
        self._thresholds: torch.Tensor | None = thresholds
        self._sign_total = 0
        self._majority: int | None = None
        self._majority_requested = False
        self._workspace = Workspace()

    def _selecting(self) -> bool:
        return self._select is not None and not self._select.done

    def _trim(self, taus: torch.Tensor) -> torch.Tensor:
        return ties_trim(taus, self._thresholds, out=self._workspace.take("trimmed", taus.shape, taus.dtype))

    def share_scratch(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def next_pass(self) -> str | None:
        if self._selecting():
            assert self._select is not None
            return f"ties: trim threshold, pass {self._select.pass_index + 1}/{self._select.num_passes}"
        return None

    def observe(self, key: str, taus: torch.Tensor) -> None:
        if self._selecting():
            assert self._select is not None
            flat = taus.reshape(self._rows, -1)
            for a, b in stack_column_chunks(taus) or [(0, flat.shape[1])]:  # histograms: any chunking
                self._select.observe(flat[:, a:b], magnitude=True)
        elif self._majority_requested:
            chunks = stack_column_chunks(taus)
            if chunks is None:
                self._sign_total += ties_column_sign_total(self._trim(taus))
            else:
                flat = taus.reshape(self._rows, -1)
                self._sign_total += sum(ties_column_sign_total(self._trim(flat[:, a:b])) for a, b in chunks)
        else:
            raise AssertionError("ties: no statistics pass in progress")

    def end_pass(self) -> None:
        if self._selecting():
            assert self._select is not None
            self._select.end_pass()
            if self._select.done:
                self._thresholds = self._select.values()[:, 0]
                self._select = None  # its scratch (keys of the largest chunk) is no longer needed
        elif self._majority_requested:
            self._majority = (self._sign_total > 0) - (self._sign_total < 0)
            self._majority_requested = False

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        assert not self._selecting(), "ties: finalize before the statistics passes"
        chunks = stack_column_chunks(taus)
        if chunks is None:
            return self._finalize_columns(taus)
        flat = taus.reshape(self._rows, -1)
        merged = torch.empty(flat.shape[1], dtype=taus.dtype)
        for a, b in chunks:  # column by column: the same bits as the whole key (`stack_column_chunks`)
            merged[a:b] = self._finalize_columns(flat[:, a:b])
        return merged.view(taus.shape[1:])

    def _finalize_columns(self, taus: torch.Tensor) -> torch.Tensor:
        trimmed = self._trim(taus)
        elected = torch.sign(trimmed.sum(0))
        if self._majority is None and ties_needs_majority(trimmed, elected):
            self._majority_requested = True
            raise PassNeeded("ties: majority sign")
        elected[elected == 0] = float(self._majority or 0)
        return ties_disjoint_mean(trimmed, elected, self._workspace.take("agreeing", taus.shape, taus.dtype))


class TiesPoolingRun(PoolingRun):
    """TIES as a pooling: thresholds over the taus and each merge once, then `TiesRun` on the members."""

    def __init__(self, params: Mapping[str, float | int], shape: PoolingShape) -> None:
        self._shape = shape
        self._density = float(params["density"])
        layout = shape.layout
        total = layout.total_numel
        rank = ties_trim_rank(total, self._density)
        self._tasks = layout.num_tasks if shape.pool_over == "all" else 0
        self._rows = self._tasks + shape.num_merges
        self._select = (order_statistics([[rank]] * self._rows, layout.compute_dtype, total)
                        if rank is not None and total > 0 else None)
        if self._select is None:
            self.run = TiesRun(shape.member_layout, density=self._density)

    def _selecting(self) -> bool:
        return self._select is not None and not self._select.done

    def next_pass(self) -> str | None:
        if self._selecting():
            assert self._select is not None
            return (f"pooling ties: trim threshold of {self._tasks} task vectors and {self._shape.num_merges} "
                    f"merge(s), pass {self._select.pass_index + 1}/{self._select.num_passes}")
        return super().next_pass()

    def observe(self, key: str, members: Members) -> None:
        if not self._selecting():
            return super().observe(key, members)
        assert self._select is not None
        rows = [members.taus[: self._tasks]] + [members.merge(c).unsqueeze(0) for c in range(self._shape.num_merges)]
        self._select.observe(torch.cat(rows).reshape(self._rows, -1), magnitude=True)

    def end_pass(self) -> None:
        if not self._selecting():
            return super().end_pass()
        assert self._select is not None
        self._select.end_pass()
        if self._select.done:
            found = self._select.values()[:, 0]
            dtype = found.dtype
            lams = torch.tensor([lam for _, lam in self._shape.points], dtype=dtype, device=found.device)
            merges = torch.tensor([c for c, _ in self._shape.points], dtype=torch.int64, device=found.device)
            # the order statistic of |lam * M| = fl(|lam| * |M|) is fl(|lam| * that of |M|): exact
            points = lams.abs() * found[self._tasks + merges]
            thresholds = torch.cat([found[: self._tasks], points])
            self.run = TiesRun(self._shape.member_layout, density=self._density, thresholds=thresholds)
            self._select = None  # its scratch is no longer needed


METHOD = ModelWideMethod(
    name="ties",
    summary="trim to the top density of each task vector, elect signs, disjoint mean",
    hparams=(unit_interval("density", 0.2, low_open=True, help="fraction of each task vector kept"),),
    begin=TiesRun,
    as_pooling=TiesPoolingRun,
)
