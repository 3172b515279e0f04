"""PCB-Merging (Du et al., 2024): Parameter Competition Balancing, model-wide.

Flatten as in TIES (`T x D`, keys sorted), `n = T`; `norm(v)` is the per-row min-max
scaling to [0, 1].
1. `a = |X|` clamped per row between its values at ascending sorted positions
   `lo = int(0.01*D)` and `hi = int(0.99*D) - 1`; `Xc = sign(X) * a`.
2. `Xn = sign(X) * norm(a)`.
3. `intra = exp(n * norm(a)^2)`, `inter_i = sum_j tanh(Xn_i * Xn_j)` (j over all rows).
4. `b = intra * inter`; per row clamp `b` from below at its value at sorted position
   `int(D * (1 - ratio))`, `w = norm(clamped b)`.
5. `M = sum_i Xc_i * w_i / max(sum_i w_i, 1e-12)` per column.

Choices where the spec is silent: `hi` is read as a Python index, so `D = 1` gives
position 0; the `b` position is capped at `D - 1` (float rounding of `1 - ratio`); the
min-max scaling of a constant row (max == min) is 0 everywhere (0/0 := 0); `D = 0` gives
empty results. Since the clamped rows' minimum and maximum are exactly the clamp bounds,
`norm(a) = (a - a_lo) / (a_hi - a_lo)` and `w = (max(b, b_q) - b_q) / (max(b) - b_q)`.

Streaming: radix selects (`weaving.quantile`) of `|X|` at `lo`, `hi`, then of `b` at its
position and at `D - 1` (the row maximum), then per-key finalisation.
"""

from __future__ import annotations

import torch

from weaving.methods.base import ModelLayout, ModelWideMethod, MethodRun, HParam
from weaving.quantile import RadixSelect


def pcb_magnitude_positions(total: int) -> tuple[int, int]:
    """Sorted positions (`lo`, `hi`) of the magnitude clamp bounds in a row of `total`."""
    hi = int(0.99 * total) - 1
    return int(0.01 * total), hi if hi >= 0 else total + hi


def pcb_score_position(total: int, ratio: float) -> int:
    """Sorted position of the lower clamp of `b`: `int(D * (1 - ratio))`, at most `D - 1`."""
    return min(int(total * (1.0 - ratio)), total - 1)


def _per_row(bound: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bound.view(-1, *([1] * (like.ndim - 1)))


def min_max(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """`(values - low) / (high - low)` with per-row bounds; a row with `high == low` gives 0."""
    low, high = _per_row(low, values), _per_row(high, values)
    span = high - low
    scaled = (values - low) / torch.where(span > 0, span, torch.ones((), dtype=values.dtype))
    return torch.where(span > 0, scaled, torch.zeros((), dtype=values.dtype))


def pcb_clamped(taus: torch.Tensor, a_lo: torch.Tensor, a_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(Xc, norm(a))` for one key's stacked task vectors `taus` `[T, *shape]`."""
    magnitude = taus.abs().clamp(min=_per_row(a_lo, taus), max=_per_row(a_hi, taus))
    return torch.sign(taus) * magnitude, min_max(magnitude, a_lo, a_hi)


def pcb_balance(taus: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """`b = exp(n * norm(a)^2) * sum_j tanh(Xn_i * Xn_j)`, `[T, *shape]`."""
    signed = torch.sign(taus) * normed
    inter = torch.zeros_like(signed)
    for j in range(taus.shape[0]):
        inter += torch.tanh(signed * signed[j])
    return torch.exp(taus.shape[0] * normed.square()) * inter


def pcb_combine(clamped: torch.Tensor, balance: torch.Tensor, b_low: torch.Tensor, b_max: torch.Tensor) -> torch.Tensor:
    """`sum_i Xc_i w_i / max(sum_i w_i, 1e-12)`, `w = norm(max(b, b_low))`."""
    weights = min_max(torch.maximum(balance, _per_row(b_low, balance)), b_low, b_max)
    return (clamped * weights).sum(0) / weights.sum(0).clamp(min=1e-12)


class PcbRun(MethodRun):
    """Statistics passes (|X| clamp bounds, then b's clamp bound and maximum), then finalisation."""

    def __init__(self, layout: ModelLayout, *, ratio: float) -> None:
        total = layout.total_numel
        self._rows = layout.num_tasks
        self._dtype = layout.compute_dtype
        self._magnitude_select: RadixSelect | None = None
        self._score_select: RadixSelect | None = None
        self._bounds: torch.Tensor | None = None  # [T, 2]: a_lo, a_hi
        self._score_bounds: torch.Tensor | None = None  # [T, 2]: b_low, b_max
        if total:
            self._magnitude_select = RadixSelect([list(pcb_magnitude_positions(total))] * self._rows, self._dtype)
            self._score_select = RadixSelect([[pcb_score_position(total, ratio), total - 1]] * self._rows, self._dtype)

    def _stage(self) -> RadixSelect | None:
        for select in (self._magnitude_select, self._score_select):
            if select is not None and not select.done:
                return select
        return None

    def next_pass(self) -> str | None:
        select = self._stage()
        if select is None:
            return None
        what = "magnitude clamp" if select is self._magnitude_select else "balance threshold"
        return f"pcb: {what}, pass {select.pass_index + 1}/{select.num_passes}"

    def _balance(self, taus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._bounds is not None
        clamped, normed = pcb_clamped(taus, self._bounds[:, 0], self._bounds[:, 1])
        return clamped, pcb_balance(taus, normed)

    def observe(self, key: str, taus: torch.Tensor) -> None:
        select = self._stage()
        assert select is not None
        if select is self._magnitude_select:
            select.observe(taus.abs().reshape(self._rows, -1))
        else:
            select.observe(self._balance(taus)[1].reshape(self._rows, -1))

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
        clamped, balance = self._balance(taus)
        return pcb_combine(clamped, balance, self._score_bounds[:, 0], self._score_bounds[:, 1])


METHOD = ModelWideMethod(
    name="pcb",
    summary="parameter competition balancing: intra/inter-task importance weights",
    hparams=(HParam("ratio", 0.05, float, 0.0, 1.0, low_open=True, help="fraction of top balance scores kept"),),
    begin=PcbRun,
)
