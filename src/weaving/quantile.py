"""Exact streaming order statistics: radix select over float bit patterns.

Each float maps to an order-preserving signed integer of the same width `W`:
`k = bits ^ ((bits >> (W-1)) & (2**(W-1) - 1))`, i.e. the bits unchanged when the sign bit
is clear and the magnitude bits flipped when it is set (larger negative floats get smaller
integers). `-0.0` sorts just below `+0.0`; both compare equal as floats, so the selected
value is the same number.

`k` is read as `W / 16` digits of 16 bits, most significant first. Pass `p` builds, for
every query (a row and a rank), a 65536-bin histogram (`torch.bincount`) of digit `p` over
the values of the row whose higher digits equal those already fixed for that query; the
bin holding the query's remaining rank fixes digit `p`. After `W / 16` passes
(float16/bfloat16: 1, float32: 2, float64: 4) the digits are the exact bit pattern of the
value of that rank. Values arrive in column chunks in any order; histograms are sums, so
the result does not depend on chunking or order.

Restricting a histogram to a prefix needs no masking: with `t = (k >> s) - (prefix << 16)`,
the values of the prefix are exactly those with `0 <= t < 65536`; `t` is clamped to
`[-1, 65536]` and shifted by one, so values outside fall in two discard bins.

Supports finite values and infinities; NaN is not supported (callers reject it first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.errors import InputError, ParamError

DIGIT_BITS = 16
NUM_BINS = 1 << DIGIT_BITS
_TOP_BIT = 1 << (DIGIT_BITS - 1)
_PADDED_BINS = NUM_BINS + 2  # two discard bins around the digits of a prefix

_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_KEY_DTYPE = {torch.int16: torch.int32, torch.int32: torch.int32, torch.int64: torch.int64}
_WIDTH = {torch.int16: 16, torch.int32: 32, torch.int64: 64}


def _magnitude_mask(width: int) -> int:
    return (1 << (width - 1)) - 1


def order_keys(values: torch.Tensor, *, out: torch.Tensor | None = None, magnitude: bool = False) -> torch.Tensor:
    """Order-preserving integer image of float `values` (of `|values|` with `magnitude`).

    Keys are int32 for 16- and 32-bit floats, int64 for float64; `out` (same shape, that
    dtype) avoids a fresh allocation.
    """
    if values.dtype not in _INT_VIEW:
        raise ParamError(f"order_keys: dtype {values.dtype} is not supported; valid: {list(_INT_VIEW)}")
    bits_dtype = _INT_VIEW[values.dtype]
    bits = values.contiguous().view(bits_dtype)
    mask = _magnitude_mask(_WIDTH[bits_dtype])
    if out is None:
        out = torch.empty(values.shape, dtype=_KEY_DTYPE[bits_dtype])
    if magnitude:
        if bits_dtype == torch.int16:
            out.copy_(bits)
            return out.bitwise_and_(mask)
        return torch.bitwise_and(bits, mask, out=out)
    if bits_dtype == torch.int16:
        out.copy_(bits)
        return out.bitwise_xor_(out.bitwise_right_shift(15).bitwise_and_(mask))
    torch.bitwise_right_shift(bits, _WIDTH[bits_dtype] - 1, out=out)
    return out.bitwise_and_(mask).bitwise_xor_(bits)


def _keys_to_values(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `order_keys` for an int64 tensor of keys."""
    bits_dtype = _INT_VIEW[dtype]
    mask = _magnitude_mask(_WIDTH[bits_dtype])
    bits = torch.where(keys >= 0, keys, keys ^ mask)
    return bits.to(bits_dtype).view(dtype)


class RadixSelect:
    """Exact values of given ranks in each row of a `rows x D` matrix seen in column chunks.

    `ranks[r]` lists the 0-based ranks (ascending order) wanted in row `r`; every row asks
    the same number of ranks. Usage::

        select = RadixSelect(ranks, dtype)
        while not select.done:
            for chunk in chunks:          # chunk: [rows, n] of `dtype`, any n, any order
                select.observe(chunk)     # magnitude=True: select over |chunk|
            select.end_pass()
        select.values()                   # [rows, len(ranks[0])] of `dtype`
    """

    BUFFER_ELEMENTS = 1 << 20

    def __init__(self, ranks: torch.Tensor | Sequence[Sequence[int]], dtype: torch.dtype) -> None:
        if dtype not in _INT_VIEW:
            raise ParamError(f"RadixSelect: dtype {dtype} is not supported; valid: {list(_INT_VIEW)}")
        ranks = torch.as_tensor(ranks, dtype=torch.int64)
        if ranks.ndim != 2 or ranks.shape[1] == 0:
            raise ParamError(f"RadixSelect: ranks must be [rows, queries], got shape {tuple(ranks.shape)}")
        if (ranks < 0).any():
            raise ParamError(f"RadixSelect: ranks must be >= 0, got {ranks.tolist()}")
        self.dtype = dtype
        self.width = _WIDTH[_INT_VIEW[dtype]]
        self.num_passes = self.width // DIGIT_BITS
        self.rows, self.per_row = ranks.shape
        self._key_dtype = _KEY_DTYPE[_INT_VIEW[dtype]]
        self._remaining = ranks.clone()  # [rows, queries]
        self._prefix = torch.zeros_like(ranks)  # signed value of the digits fixed so far
        self._pass = 0
        self._count = 0
        self._hist: torch.Tensor | None = None
        self._pending: list[torch.Tensor] = []
        self._pending_numel = 0
        self._magnitude: bool | None = None
        self._scratch: dict[str, torch.Tensor] = {}

    @property
    def done(self) -> bool:
        return self._pass >= self.num_passes

    @property
    def pass_index(self) -> int:
        return self._pass

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = shape[0] * shape[1]
        buffer = self._scratch.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=self._key_dtype)
            self._scratch[name] = buffer
        return buffer[:numel].view(shape)

    def observe(self, chunk: torch.Tensor, *, magnitude: bool = False) -> None:
        """Add a `[rows, n]` chunk of values (of `|values|` with `magnitude`) to this pass.

        Every chunk of a selection must use the same `magnitude`. Small chunks are buffered
        (up to `BUFFER_ELEMENTS` values) and histogrammed together.
        """
        if self.done:
            raise ParamError("RadixSelect.observe: every pass is already done")
        if chunk.dtype != self.dtype or chunk.ndim != 2 or chunk.shape[0] != self.rows:
            raise ParamError(
                f"RadixSelect.observe: expected a [{self.rows}, n] chunk of {self.dtype}, "
                f"got {tuple(chunk.shape)} of {chunk.dtype}"
            )
        if self._magnitude is None:
            self._magnitude = magnitude
        elif self._magnitude != magnitude:
            raise ParamError("RadixSelect.observe: every chunk must use the same `magnitude`")
        if chunk.shape[1] == 0:
            return
        if chunk.numel() >= self.BUFFER_ELEMENTS:
            self._histogram(chunk)
            return
        self._pending.append(chunk.clone())
        self._pending_numel += chunk.numel()
        if self._pending_numel >= self.BUFFER_ELEMENTS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._histogram(torch.cat(self._pending, dim=1))
        self._pending, self._pending_numel = [], 0

    def _histogram(self, chunk: torch.Tensor) -> None:
        shape = tuple(chunk.shape)
        keys = order_keys(chunk, out=self._buffer("keys", shape), magnitude=bool(self._magnitude))
        shift = self.width - DIGIT_BITS * (self._pass + 1)
        if shift:
            keys.bitwise_right_shift_(shift)
        rows = torch.arange(self.rows, dtype=self._key_dtype).unsqueeze(1)
        if self._pass == 0:
            self._count += shape[1]
            keys.add_(rows * NUM_BINS + _TOP_BIT)  # signed top digit -> bin, one block per row
            counts = torch.bincount(keys.view(-1), minlength=self.rows * NUM_BINS).view(1, self.rows, NUM_BINS)
        else:
            shifted = self._buffer("shifted", shape)
            per_query = []
            for q in range(self.per_row):
                low = (self._prefix[:, q : q + 1] << DIGIT_BITS).to(self._key_dtype)
                torch.sub(keys, low, out=shifted)
                shifted.clamp_(-1, NUM_BINS).add_(rows * _PADDED_BINS + 1)
                padded = torch.bincount(shifted.view(-1), minlength=self.rows * _PADDED_BINS)
                per_query.append(padded.view(self.rows, _PADDED_BINS)[:, 1:-1])
            counts = torch.stack(per_query)
        self._hist = counts if self._hist is None else self._hist + counts

    def end_pass(self) -> None:
        """Fix the current digit of every query from the histograms of this pass."""
        if self.done:
            raise ParamError("RadixSelect.end_pass: every pass is already done")
        self._flush()
        if self._pass == 0:
            largest = int(self._remaining.max())
            if largest >= self._count:
                raise InputError(f"RadixSelect: rank {largest} is out of range for rows of {self._count} values")
        assert self._hist is not None
        cumulative = self._hist.cumsum(-1).expand(self.per_row, self.rows, NUM_BINS)  # [queries, rows, bins]
        wanted = self._remaining.T.unsqueeze(-1).contiguous()  # [queries, rows, 1]
        digits = torch.searchsorted(cumulative.contiguous(), wanted, right=True)
        padded = torch.nn.functional.pad(cumulative, (1, 0))
        below = padded.gather(-1, digits)
        digits, below = digits.squeeze(-1).T, below.squeeze(-1).T  # [rows, queries]
        self._remaining -= below
        if self._pass == 0:
            self._prefix = digits - _TOP_BIT
        else:
            self._prefix = self._prefix * NUM_BINS + digits
        self._hist = None
        self._pass += 1

    def values(self) -> torch.Tensor:
        """The selected values, `[rows, queries]` of `dtype`."""
        if not self.done:
            raise ParamError(f"RadixSelect.values: {self.num_passes - self._pass} pass(es) still to run")
        return _keys_to_values(self._prefix, self.dtype)


def select_ranks(values: torch.Tensor, ranks: torch.Tensor | Sequence[Sequence[int]], *, magnitude: bool = False) -> torch.Tensor:
    """In-memory convenience: `values` `[rows, D]`; the value of each 0-based rank per row."""
    select = RadixSelect(ranks, values.dtype)
    while not select.done:
        select.observe(values, magnitude=magnitude)
        select.end_pass()
    return select.values()


class TailSelect:
    """Exact values of ranks near either end of each row, in ONE pass, keeping candidates.

    For a rank `r` in rows of `total` values, the value is the `(total - r)`-th largest
    (top tail) or the `(r + 1)`-th smallest (bottom tail), whichever count is smaller. Each
    row keeps, per tail, every value that can still be among its `count` most extreme:
    values beyond the current bound (the `count`-th most extreme so far, which only moves
    outward) are buffered; once `count` new values are buffered the candidates are pruned
    back to the ones at or beyond the new bound (`torch.kthvalue`). Exact for any chunking
    and order; memory about `2 * count` values per row and tail. Same interface as
    `RadixSelect` with `num_passes = 1`; `total` is the row length, known in advance.
    """

    num_passes = 1

    def __init__(self, ranks: torch.Tensor | Sequence[Sequence[int]], dtype: torch.dtype, total: int) -> None:
        ranks = torch.as_tensor(ranks, dtype=torch.int64)
        if ranks.ndim != 2 or ranks.shape[1] == 0:
            raise ParamError(f"TailSelect: ranks must be [rows, queries], got shape {tuple(ranks.shape)}")
        if (ranks < 0).any() or (ranks >= total).any():
            raise InputError(f"TailSelect: ranks {ranks.tolist()} out of range for rows of {total} values")
        if not dtype.is_floating_point:
            raise ParamError(f"TailSelect: dtype {dtype} is not a floating dtype")
        self.dtype = dtype
        self.total = total
        self.rows = ranks.shape[0]
        self._ranks = ranks
        self._top, self.top_count, self.bottom_count = _tail_counts(ranks, total)
        # per tail: candidates (pruned) and newly buffered values, per row; bound per row
        self._tails = {
            sign: [_Tail(count) for _ in range(self.rows)]
            for sign, count in ((1, self.top_count), (-1, self.bottom_count))
            if count
        }
        self._count = 0
        self._done = False

    @staticmethod
    def candidates_for(ranks: torch.Tensor | Sequence[Sequence[int]], total: int) -> int:
        """Values kept per row after pruning: the largest count of each tail, summed."""
        top_count, bottom_count = _tail_counts(torch.as_tensor(ranks, dtype=torch.int64), total)[1:]
        return top_count + bottom_count

    @property
    def done(self) -> bool:
        return self._done

    @property
    def pass_index(self) -> int:
        return int(self._done)

    def observe(self, chunk: torch.Tensor, *, magnitude: bool = False) -> None:
        """Add a `[rows, n]` chunk (of `|chunk|` with `magnitude`)."""
        if self._done:
            raise ParamError("TailSelect.observe: the pass is already done")
        if chunk.dtype != self.dtype or chunk.ndim != 2 or chunk.shape[0] != self.rows:
            raise ParamError(
                f"TailSelect.observe: expected a [{self.rows}, n] chunk of {self.dtype}, "
                f"got {tuple(chunk.shape)} of {chunk.dtype}"
            )
        self._count += chunk.shape[1]
        for row in range(self.rows):
            values = chunk[row].abs() if magnitude else chunk[row]
            for sign, tails in self._tails.items():
                tails[row].add(values, negate=sign < 0)

    def end_pass(self) -> None:
        if self._done:
            raise ParamError("TailSelect.end_pass: the pass is already done")
        if self._count != self.total:
            raise InputError(f"TailSelect: saw {self._count} values per row, expected {self.total}")
        self._done = True

    def values(self) -> torch.Tensor:
        """The selected values, `[rows, queries]` of `dtype`."""
        if not self._done:
            raise ParamError("TailSelect.values: the pass is still to run")
        out = torch.empty(self._ranks.shape, dtype=self.dtype)
        for row in range(self.rows):
            for q, rank in enumerate(self._ranks[row].tolist()):
                if bool(self._top[row, q]):
                    out[row, q] = self._tails[1][row].largest(self.total - rank)
                else:
                    out[row, q] = -self._tails[-1][row].largest(rank + 1)
        return out


def _tail_counts(ranks: torch.Tensor, total: int) -> tuple[torch.Tensor, int, int]:
    """Per query whether the top tail serves it; the top and bottom tails' largest counts."""
    top, bottom = total - ranks, ranks + 1
    on_top = top <= bottom
    top_count = int(top[on_top].max()) if on_top.any() else 0
    bottom_count = int(bottom[~on_top].max()) if (~on_top).any() else 0
    return on_top, top_count, bottom_count


TAIL_FRACTION = 1 / 8
TAIL_BUDGET = 1 << 27


def order_statistics(
    ranks: torch.Tensor | Sequence[Sequence[int]], dtype: torch.dtype, total: int, *, tail_budget: int = TAIL_BUDGET
) -> RadixSelect | TailSelect:
    """The cheaper exact selection of `ranks` in rows of `total` values.

    `TailSelect` (one pass) when every rank lies within `TAIL_FRACTION` of an end of the
    row and all rows together keep at most `tail_budget` candidates; otherwise
    `RadixSelect` (one pass per 16 bits of `dtype`).
    """
    ranks = torch.as_tensor(ranks, dtype=torch.int64)
    kept = TailSelect.candidates_for(ranks, total)
    if total > 0 and kept <= total * TAIL_FRACTION and kept * ranks.shape[0] <= tail_budget:
        return TailSelect(ranks, dtype, total)
    return RadixSelect(ranks, dtype)


class _Tail:
    """What one row needs to know about its `count` largest values.

    A bound `b` (None until `count` values are seen), every value seen `> b` (`above`,
    buffered in chunks) and how many equal `b` (`at_bound`), with `|above| + at_bound >=
    count`; values below `b` cannot be among the `count` largest. Ties at the bound are
    counted, not stored, so memory stays near `count` values even when many values tie.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.bound: torch.Tensor | None = None
        self.at_bound = 0
        self.above: list[torch.Tensor] = []
        self.new_numel = 0

    def add(self, values: torch.Tensor, *, negate: bool = False) -> None:
        """Add `values` (`-values` with `negate`: the bottom tail of the row)."""
        if self.bound is not None:
            values = values[values <= -self.bound] if negate else values[values >= self.bound]
            if negate:
                values = values.neg_()
            at_bound = values == self.bound
            self.at_bound += int(at_bound.sum())
            values = values[~at_bound]
        else:
            values = -values if negate else values.clone()
        if values.numel() == 0:
            return
        self.above.append(values)
        self.new_numel += values.numel()
        if self.new_numel >= max(self.count, 1 << 16):
            self._prune()

    def _merged(self) -> torch.Tensor:
        merged = torch.cat(self.above) if len(self.above) > 1 else self.above[0]
        self.above, self.new_numel = [merged], 0
        return merged

    def _prune(self) -> None:
        merged = self._merged()
        if merged.numel() < self.count:
            return
        bound = _kth_largest_lower_bound(merged, self.count)
        if self.bound is not None and not bool(bound > self.bound):
            bound = torch.kthvalue(merged, merged.numel() - self.count + 1).values  # > self.bound
        self.at_bound = int((merged == bound).sum())
        self.above = [merged[merged > bound]]
        self.bound = bound

    def largest(self, k: int) -> torch.Tensor:
        """The k-th largest value of the row (k <= count)."""
        merged = self._merged() if self.above else torch.empty(0)
        if k <= merged.numel():
            return torch.kthvalue(merged, merged.numel() - k + 1).values
        assert self.bound is not None and merged.numel() + self.at_bound >= k
        return self.bound


def _kth_largest_lower_bound(values: torch.Tensor, k: int) -> torch.Tensor:
    """A value `v <= ` the k-th largest of `values` with few values in `[v, kth]`: the lower
    edge of the top-16-bit bin that holds the k-th largest (one histogram pass)."""
    width = _WIDTH[_INT_VIEW[values.dtype]]
    shift = width - DIGIT_BITS
    top = order_keys(values)
    if shift:
        top.bitwise_right_shift_(shift)
    counts = torch.bincount(top.view(-1).add_(_TOP_BIT), minlength=NUM_BINS)
    from_top = counts.flip(0).cumsum(0)
    bin_from_top = int(torch.searchsorted(from_top, torch.tensor([k]), right=False)[0])
    signed_bin = NUM_BINS - 1 - bin_from_top - _TOP_BIT
    return _keys_to_values(torch.tensor(signed_bin << shift, dtype=torch.int64), values.dtype)
