"""PCB-Merging (Du et al., 2024): Parameter Competition Balancing, model-wide.

Flatten as in TIES (`T x D`, keys sorted), `n = T`; `norm(v)` is the per-row min-max
scaling to [0, 1].
1. `a = |X|` clamped per row between its values at ascending sorted positions
   `lo = int(0.01*D)` and `hi = int(0.99*D) - 1`; `Xc = sign(X) * a`.
2. `Xn = sign(X) * norm(a)`.
3. `intra = exp(n * norm(a)^2)`, `inter_i = sum_j tanh(Xn_i * Xn_j)` (j over all rows), as the
   Weight Weaving authors' `src/merging/pcb.py`; with `summed_inter=True`,
   `inter_i = tanh(X_i * sum_j X_j)` on the raw task vectors, as the PCB repository's
   `pcb-merging.py` (duguodong7/pcb-merging). The two differ: the pairwise form sums T bounded
   terms of normalised values (inter in [-T, T]); the summed form squashes one product of raw
   deltas, which for fine-tuning deltas of order 1e-3 is nearly linear and near 0.
4. `b = intra * inter`; per row clamp `b` from below at its value at sorted position
   `int(D * (1 - ratio))`, `w = norm(clamped b)`.
5. `M = sum_i Xc_i * w_i / max(sum_i w_i, 1e-12)` per column.

Choices where the spec is silent: `hi` is read as a Python index, so `D = 1` gives
position 0; the `b` position is capped at `D - 1` (float rounding of `1 - ratio`); the
min-max scaling of a constant row (max == min) is 0 everywhere (0/0 := 0); `D = 0` gives
empty results. A 0-D tensor is one column, a tensor with a zero-size dimension none;
`T = 1` needs no special case. Since the clamped rows' minimum and maximum are exactly the clamp bounds,
`norm(a) = (a - a_lo) / (a_hi - a_lo)` and `w = (max(b, b_q) - b_q) / (max(b) - b_q)`.

Streaming: exact order statistics (`weaving.quantile`) of `|X|` at `lo`, `hi`, then of `b`
at its position and at `D - 1` (the row maximum), then per-key finalisation. Near the ends
of a row (the default ratio) each selection is one pass keeping tail candidates; otherwise
a radix select, one pass per 16 bits.

As a pooling: no shortcut (its balance scores couple the members pairwise); the members of each
key are materialised in its statistics passes and finalisation.
"""

from __future__ import annotations

import torch

from weaving.methods.base import HParam, MethodRun, ModelLayout, ModelWideMethod, Workspace
from weaving.quantile import RadixSelect, TailSelect, order_statistics


def pcb_magnitude_positions(total: int) -> tuple[int, int]:
    """Sorted positions (`lo`, `hi`) of the magnitude clamp bounds in a row of `total`."""
    hi = int(0.99 * total) - 1
    return int(0.01 * total), hi if hi >= 0 else total + hi


def pcb_score_position(total: int, ratio: float) -> int:
    """Sorted position of the lower clamp of `b`: `int(D * (1 - ratio))`, at most `D - 1`."""
    return min(int(total * (1.0 - ratio)), total - 1)


def _per_row(bound: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bound.view(-1, *([1] * (like.ndim - 1)))


def min_max_(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """In place: `(values - low) / (high - low)` with per-row bounds; rows with `high == low` give 0."""
    low, high = _per_row(low, values), _per_row(high, values)
    span = high - low
    values.sub_(low).div_(torch.where(span > 0, span, torch.ones((), dtype=values.dtype)))
    return values.mul_((span > 0).to(values.dtype))


def pcb_scores(
    taus: torch.Tensor, a_lo: torch.Tensor, a_hi: torch.Tensor, workspace: Workspace, *, clamped: bool = False,
    summed_inter: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(b, Xc)` for one key's stacked task vectors `taus` `[T, *shape]` (`Xc` only if `clamped`).

    `a = clamp(|X|, a_lo, a_hi)`, `Xc = sign(X) * a`, `Xn = sign(X) * norm(a)`,
    `b = exp(n * norm(a)^2) * sum_j tanh(Xn * Xn_j)`, each of the `T (T + 1) / 2` distinct
    products evaluated once (the sum is then not in j order: equal up to rounding);
    `summed_inter` replaces the inter term by `tanh(X * sum_j X_j)` (the PCB repository's). Results
    live in `workspace` buffers.
    """
    shape, dtype = taus.shape, taus.dtype
    magnitude = torch.abs(taus, out=workspace.take("magnitude", shape, dtype))
    magnitude.clamp_(min=_per_row(a_lo, taus), max=_per_row(a_hi, taus))
    signs = torch.sign(taus, out=workspace.take("signed", shape, dtype))
    xc = torch.mul(signs, magnitude, out=workspace.take("clamped", shape, dtype)) if clamped else None
    normed = min_max_(magnitude, a_lo, a_hi)
    signed = signs.mul_(normed)
    if summed_inter:
        inter = torch.mul(taus, taus.sum(0), out=workspace.take("inter", shape, dtype)).tanh_()
        return normed.square_().mul_(shape[0]).exp_().mul_(inter), xc
    # tanh(Xn_i * Xn_j) is symmetric in (i, j): evaluate each pair once
    inter = torch.mul(signed, signed, out=workspace.take("inter", shape, dtype)).tanh_()
    for i in range(shape[0] - 1):
        pairs = torch.mul(signed[i + 1 :], signed[i], out=workspace.take("pairs", signed[i + 1 :].shape, dtype)).tanh_()
        inter[i + 1 :] += pairs
        inter[i] += pairs.sum(0)
    balance = normed.square_().mul_(shape[0]).exp_().mul_(inter)
    return balance, xc


def pcb_combine_(clamped: torch.Tensor, balance: torch.Tensor, b_low: torch.Tensor, b_max: torch.Tensor) -> torch.Tensor:
    """`sum_i Xc_i w_i / max(sum_i w_i, 1e-12)`, `w = norm(max(b, b_low))` (overwrites its inputs)."""
    weights = min_max_(balance.clamp_(min=_per_row(b_low, balance)), b_low, b_max)
    return clamped.mul_(weights).sum(0).div_(weights.sum(0).clamp_(min=1e-12))


class PcbRun(MethodRun):
    """Statistics passes (|X| clamp bounds, then b's clamp bound and maximum), then finalisation."""

    def __init__(self, layout: ModelLayout, *, ratio: float, summed_inter: bool = False) -> None:
        total = layout.total_numel
        self._summed_inter = summed_inter
        self._rows = layout.num_tasks
        self._dtype = layout.compute_dtype
        self._magnitude_select: RadixSelect | TailSelect | None = None
        self._score_select: RadixSelect | TailSelect | None = None
        self._bounds: torch.Tensor | None = None  # [T, 2]: a_lo, a_hi
        self._score_bounds: torch.Tensor | None = None  # [T, 2]: b_low, b_max
        self._workspace = Workspace()
        if total:
            magnitude_ranks = [list(pcb_magnitude_positions(total))] * self._rows
            score_ranks = [[pcb_score_position(total, ratio), total - 1]] * self._rows
            self._magnitude_select = order_statistics(magnitude_ranks, self._dtype, total)
            self._score_select = order_statistics(score_ranks, self._dtype, total)

    def _stage(self) -> RadixSelect | TailSelect | None:
        for select in (self._magnitude_select, self._score_select):
            if select is not None and not select.done:
                return select
        return None

    def share_scratch(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def next_pass(self) -> str | None:
        select = self._stage()
        if select is None:
            return None
        what = "magnitude clamp" if select is self._magnitude_select else "balance threshold"
        return f"pcb: {what}, pass {select.pass_index + 1}/{select.num_passes}"

    def _scores(self, taus: torch.Tensor, clamped: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self._bounds is not None
        return pcb_scores(taus, self._bounds[:, 0], self._bounds[:, 1], self._workspace, clamped=clamped,
                          summed_inter=self._summed_inter)

    def observe(self, key: str, taus: torch.Tensor) -> None:
        select = self._stage()
        assert select is not None
        if select is self._magnitude_select:
            select.observe(taus.reshape(self._rows, -1), magnitude=True)
        else:
            select.observe(self._scores(taus)[0].reshape(self._rows, -1))

    def end_pass(self) -> None:
        select = self._stage()
        assert select is not None
        select.end_pass()
        if select.done:
            if select is self._magnitude_select:
                self._bounds = select.values()
            else:
                self._score_bounds = select.values()

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        if taus[0].numel() == 0:
            return torch.zeros(taus.shape[1:], dtype=taus.dtype)
        assert self._score_bounds is not None, "pcb: finalize before the statistics passes"
        balance, clamped = self._scores(taus, clamped=True)
        assert clamped is not None
        return pcb_combine_(clamped, balance, self._score_bounds[:, 0], self._score_bounds[:, 1])


METHOD = ModelWideMethod(
    name="pcb",
    summary="parameter competition balancing: intra/inter-task importance weights",
    hparams=(HParam("ratio", 0.05, float, 0.0, 1.0, low_open=True, help="fraction of top balance scores kept"),
             HParam("summed_inter", False, bool, help="inter term tanh(X_i * sum_j X_j) of the PCB repository "
                    "instead of the Weight Weaving authors' sum_j tanh(Xn_i * Xn_j)")),
    begin=PcbRun,
)
