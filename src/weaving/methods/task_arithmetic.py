"""Task Arithmetic (Ilharco et al., 2023): `M = sum_t tau_t`.

As a pooling: no shortcut (the `avg` pooling is its mean with a fast path); the members of each
key are materialised and summed.
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod


def task_arithmetic(taus: torch.Tensor) -> torch.Tensor:
    """`M = sum_t tau_t` over the stacked task vectors `taus` `[T, *shape]`."""
    return taus.sum(0)


METHOD = PerTensorMethod(
    name="task_arithmetic",
    summary="sum of the task vectors",
    merge_tensor=lambda taus, key: task_arithmetic(taus),
    nonfinite_propagates=True,
)
