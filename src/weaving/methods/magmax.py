"""MagMax (Marczak et al., 2024): per element, the `tau_t` of largest `|x|`; on ties the
later task wins.

As a pooling: no shortcut of its own (the `magmax` pooling is the same rule, with a fast path);
the members of each key are materialised.
"""

from __future__ import annotations

import torch

from weaving.methods.base import PerTensorMethod


def last_argmax_abs(members: torch.Tensor) -> torch.Tensor:
    """Per element, the index along dim 0 of the largest `|x|`; on ties the last index."""
    flipped = members.abs().flip(0)
    return members.shape[0] - 1 - flipped.argmax(0)


def pick(members: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`members[index[e], e]` for every element position `e`."""
    return members.gather(0, index.unsqueeze(0)).squeeze(0)


def magmax(taus: torch.Tensor) -> torch.Tensor:
    """Element-wise `tau_t` with `t` = the last argmax of `|tau_t|`."""
    return pick(taus, last_argmax_abs(taus))


METHOD = PerTensorMethod(
    name="magmax",
    summary="per element, the task vector entry of largest magnitude",
    merge_tensor=lambda taus, key: magmax(taus),
)
