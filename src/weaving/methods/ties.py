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

Streaming: `kth` per row is an exact radix select over `|x|` (`weaving.quantile`, one pass
per 16 bits of the compute dtype), then one pass sums the column signs `sign(sum_t
trimmed)` over the model for the majority sign, then each key is finalised.
"""

from __future__ import annotations

import torch

from weaving.methods.base import ModelLayout, ModelWideMethod, MethodRun, unit_interval
from weaving.quantile import RadixSelect


def ties_trim_rank(total: int, density: float) -> int | None:
    """0-based rank of `kth` in a row of `total` magnitudes, or None to keep everything."""
    kept = int(total * density)
    return None if total - kept < 1 else total - kept - 1


def ties_trim(taus: torch.Tensor, thresholds: torch.Tensor | None) -> torch.Tensor:
    """Entries of `taus` `[T, *shape]` with `|x| >= thresholds[t]` (None: all), others 0."""
    if thresholds is None:
        return taus
    threshold = thresholds.view(-1, *([1] * (taus.ndim - 1)))
    return torch.where(taus.abs() >= threshold, taus, torch.zeros((), dtype=taus.dtype))


def ties_column_sign_total(trimmed: torch.Tensor) -> int:
    """`sum(sign(sum_t trimmed_t))` over the columns of one key (exact, integer)."""
    return int(torch.sign(trimmed.sum(0)).to(torch.int64).sum())


def ties_elect_mean(trimmed: torch.Tensor, majority_sign: int) -> torch.Tensor:
    """Elect the sign per column (0 -> `majority_sign`) and average the agreeing entries."""
    elected = torch.sign(trimmed.sum(0))
    elected = torch.where(elected == 0, torch.full((), float(majority_sign), dtype=trimmed.dtype), elected)
    agrees = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = torch.where(agrees, trimmed, torch.zeros((), dtype=trimmed.dtype)).sum(0)
    return total / agrees.sum(0).clamp(min=1).to(trimmed.dtype)


class TiesRun(MethodRun):
    """Statistics passes (radix select of `kth`, then the majority sign), then finalisation."""

    def __init__(self, layout: ModelLayout, *, density: float) -> None:
        total = layout.total_numel
        rank = ties_trim_rank(total, density)
        self._rows = layout.num_tasks
        self._select = None if rank is None or total == 0 else RadixSelect([[rank]] * self._rows, layout.compute_dtype)
        self._thresholds: torch.Tensor | None = None
        self._sign_total = 0
        self._majority: int | None = None

    def _selecting(self) -> bool:
        return self._select is not None and not self._select.done

    def next_pass(self) -> str | None:
        if self._selecting():
            assert self._select is not None
            return f"ties: trim threshold, pass {self._select.pass_index + 1}/{self._select.num_passes}"
        if self._majority is None:
            return "ties: majority sign"
        return None

    def observe(self, key: str, taus: torch.Tensor) -> None:
        if self._selecting():
            assert self._select is not None
            self._select.observe(taus.abs().reshape(self._rows, -1))
        else:
            self._sign_total += ties_column_sign_total(ties_trim(taus, self._thresholds))

    def end_pass(self) -> None:
        if self._selecting():
            assert self._select is not None
            self._select.end_pass()
            if self._select.done:
                self._thresholds = self._select.values()[:, 0]
        else:
            self._majority = (self._sign_total > 0) - (self._sign_total < 0)

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        assert self._majority is not None, "ties: finalize before the statistics passes"
        return ties_elect_mean(ties_trim(taus, self._thresholds), self._majority)


METHOD = ModelWideMethod(
    name="ties",
    summary="trim to the top density of each task vector, elect signs, disjoint mean",
    hparams=(unit_interval("density", 0.2, low_open=True, help="fraction of each task vector kept"),),
    begin=TiesRun,
)
