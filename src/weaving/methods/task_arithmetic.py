"""Task Arithmetic (Ilharco et al., 2023): `M = sum_t tau_t`, summed left to right in the
compute dtype (`base.running_sum`: `((tau_1 + tau_2) + tau_3) + ...`).

As a pooling: no shortcut (the `avg` pooling is its mean with a fast path); the members of each
key are materialised and summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.methods.base import PerTensorMethod, running_sum


def task_arithmetic(taus: torch.Tensor) -> torch.Tensor:
    """`M = sum_t tau_t` over the stacked task vectors `taus` `[T, *shape]`, left to right
    (the bits of `task_arithmetic_rows(taus.unbind(0))`)."""
    if taus.shape[0] == 0:
        return torch.zeros(taus.shape[1:], dtype=taus.dtype)
    return running_sum(taus.unbind(0))


def task_arithmetic_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """`M = sum_t rows[t]` of the `T` task vectors unstacked, left to right (`running_sum`)."""
    return running_sum(rows)


METHOD = PerTensorMethod(
    name="task_arithmetic",
    summary="sum of the task vectors",
    merge_tensor=lambda taus, key: task_arithmetic(taus),
    merge_rows=task_arithmetic_rows,
    nonfinite_propagates=True,
)
