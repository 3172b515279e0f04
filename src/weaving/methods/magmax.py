"""MagMax (Marczak et al., 2024): per element, the `tau_t` of largest `|x|`; on ties the
later task wins.

As a pooling: no shortcut of its own (the `magmax` pooling is the same rule, with a fast path);
the members of each key are materialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.methods.base import PerTensorMethod


def last_argmax_abs(members: torch.Tensor) -> torch.Tensor:
    """Per element, the index along dim 0 of the largest `|x|`; on ties the last index."""
    flipped = members.abs().flip(0)
    return members.shape[0] - 1 - flipped.argmax(0)


def pick(members: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`members[index[e], e]` for every element position `e`."""
    return members.gather(0, index.unsqueeze(0)).squeeze(0)


CHUNK = 1 << 16
"""Elements per chunk of `magmax`'s running pass (its scratch stays in the CPU's cache)."""
_BITS = {torch.float32: (torch.int32, 31), torch.float64: (torch.int64, 63)}


def magmax(taus: torch.Tensor) -> torch.Tensor:
    """Element-wise `tau_t` with `t` = the last argmax of `|tau_t|` (see `magmax_rows`)."""
    if taus.dtype not in _BITS or taus.shape[0] == 0:
        return pick(taus, last_argmax_abs(taus))
    return magmax_rows(taus.unbind(0))


def magmax_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise `rows[t]` with `t` = the last argmax of `|rows[t]|` (rows of one shape and dtype).

    The same values as `pick(taus, last_argmax_abs(taus))` for tensors without NaN (inputs
    are checked finite): a running pick over `t`, chunk by chunk, in which a later task wins
    where its `|x|` is `>=` the best so far. The comparison and the pick work on the IEEE
    bit patterns as integers (the bits of `|x|` order as `|x|` does; a sign-extended
    difference is the all-ones mask where `|tau_t| >= best`), which avoids the `[T, *shape]`
    temporaries of `abs`, `flip` and `argmax` and torch's slow boolean `where`.
    """
    first = rows[0]
    if first.dtype not in _BITS:
        return pick(torch.stack(list(rows)), last_argmax_abs(torch.stack(list(rows))))
    int_dtype, sign_shift = _BITS[first.dtype]
    flat = [row.reshape(-1).view(int_dtype) for row in rows]
    best = torch.empty(first.numel(), dtype=first.dtype)
    best_bits = best.view(int_dtype)
    size = min(CHUNK, best.numel())
    best_abs, magnitude, mask = (torch.empty(size, dtype=int_dtype) for _ in range(3))
    for start in range(0, best.numel(), CHUNK):
        stop = min(start + CHUNK, best.numel())
        n = stop - start
        out, out_abs, mag, win = best_bits[start:stop], best_abs[:n], magnitude[:n], mask[:n]
        out.copy_(flat[0][start:stop])
        torch.bitwise_and(out, (1 << sign_shift) - 1, out=out_abs)  # the bits of |x|
        for row in flat[1:]:
            chunk = row[start:stop]
            torch.bitwise_and(chunk, (1 << sign_shift) - 1, out=mag)
            torch.sub(out_abs, mag, out=win)  # <= 0 where |tau_t| >= best
            win.sub_(1).bitwise_right_shift_(sign_shift)  # all ones there, else 0
            torch.maximum(out_abs, mag, out=out_abs)
            torch.bitwise_xor(out, chunk, out=mag)  # (mag reused as scratch)
            mag.bitwise_and_(win)
            out.bitwise_xor_(mag)  # out = chunk where win, else out
    return best.view(first.shape)


METHOD = PerTensorMethod(
    name="magmax",
    summary="per element, the task vector entry of largest magnitude",
    merge_tensor=lambda taus, key: magmax(taus),
    merge_rows=magmax_rows,
)
