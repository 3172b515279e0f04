"""Exact streaming order statistics: radix select over float bit patterns.

Each float maps to an order-preserving signed integer of the same width `W`:
`k = bits` when the sign bit is clear, `k = bits ^ (2**(W-1) - 1)` when it is set (the
magnitude bits flipped, so larger negative floats get smaller integers). `-0.0` sorts
just below `+0.0`; both compare equal as floats, so the selected value is the same number.

`k` is read as `W / 16` digits of 16 bits, most significant first (the top digit with its
sign bit flipped so digits are unsigned). Pass `p` builds, for every query, a 65536-bin
histogram (`torch.bincount`) of digit `p` over the values whose higher digits equal the
digits already fixed for that query; the bin holding the query's remaining rank fixes
digit `p`. After `W / 16` passes (float16/bfloat16: 1, float32: 2, float64: 4) the digits
are the exact bit pattern of the value of that rank. Values arrive in chunks (columns) in
any order; histograms are sums, so the result does not depend on chunking or order.

NaN is not supported (callers reject NaN before selecting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.errors import InputError, ParamError

DIGIT_BITS = 16
NUM_BINS = 1 << DIGIT_BITS
_DIGIT_MASK = NUM_BINS - 1
_TOP_BIT = 1 << (DIGIT_BITS - 1)

_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_WIDTH = {torch.int16: 16, torch.int32: 32, torch.int64: 64}


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving signed integer image of float `values` (same shape, int16/32/64)."""
    if values.dtype not in _INT_VIEW:
        raise ParamError(f"order_keys: dtype {values.dtype} is not supported; valid: {list(_INT_VIEW)}")
    int_dtype = _INT_VIEW[values.dtype]
    bits = values.contiguous().view(int_dtype)
    magnitude_mask = (1 << (_WIDTH[int_dtype] - 1)) - 1
    return torch.where(bits >= 0, bits, bits ^ magnitude_mask)


def _key_to_value(key: int, dtype: torch.dtype) -> float:
    """Inverse of `order_keys` for one Python-int key."""
    int_dtype = _INT_VIEW[dtype]
    magnitude_mask = (1 << (_WIDTH[int_dtype] - 1)) - 1
    bits = key if key >= 0 else key ^ magnitude_mask
    return torch.tensor([bits], dtype=int_dtype).view(dtype)[0]


class RadixSelect:
    """Exact values of given ranks in each row of a `rows x D` matrix seen in column chunks.

    `ranks[r]` lists the 0-based ranks (ascending order) wanted in row `r`; every row asks
    the same number of ranks. Usage::

        select = RadixSelect(ranks, dtype)
        while not select.done:
            for chunk in chunks:          # chunk: [rows, n] of `dtype`, any n, any order
                select.observe(chunk)
            select.end_pass()
        select.values()                   # [rows, len(ranks[0])] of `dtype`
    """

    BUFFER_ELEMENTS = 1 << 20

    def __init__(self, ranks: torch.Tensor | Sequence[Sequence[int]], dtype: torch.dtype) -> None:
        if dtype not in _INT_VIEW:
            raise ParamError(f"RadixSelect: dtype {dtype} is not supported; valid: {list(_INT_VIEW)}")
        ranks = torch.as_tensor(ranks, dtype=torch.int64)
        if ranks.ndim != 2:
            raise ParamError(f"RadixSelect: ranks must be [rows, queries], got shape {tuple(ranks.shape)}")
        if (ranks < 0).any():
            raise ParamError(f"RadixSelect: ranks must be >= 0, got {ranks.tolist()}")
        self.dtype = dtype
        self.width = _WIDTH[_INT_VIEW[dtype]]
        self.num_passes = self.width // DIGIT_BITS
        self.rows, self.per_row = ranks.shape
        self._remaining = [[int(r) for r in row] for row in ranks]
        self._prefix = [[0] * self.per_row for _ in range(self.rows)]
        self._pass = 0
        self._count = 0
        self._hist: dict[tuple[int, int], torch.Tensor] = {}
        self._pending: list[torch.Tensor] = []
        self._pending_numel = 0

    @property
    def done(self) -> bool:
        return self._pass >= self.num_passes

    @property
    def pass_index(self) -> int:
        return self._pass

    def _shift(self) -> int:
        return self.width - DIGIT_BITS * (self._pass + 1)

    def _groups(self) -> dict[int, set[int]]:
        """Row -> distinct prefixes (digits fixed so far) to histogram in this pass."""
        return {row: set(self._prefix[row]) for row in range(self.rows)}

    def observe(self, chunk: torch.Tensor) -> None:
        """Add a `[rows, n]` chunk of values to this pass's histograms.

        Small chunks are buffered (up to `BUFFER_ELEMENTS` values) and histogrammed together,
        which saves the fixed cost of a 65536-bin histogram per small tensor.
        """
        if self.done:
            raise ParamError("RadixSelect.observe: every pass is already done")
        if chunk.dtype != self.dtype or chunk.ndim != 2 or chunk.shape[0] != self.rows:
            raise ParamError(
                f"RadixSelect.observe: expected a [{self.rows}, n] chunk of {self.dtype}, "
                f"got {tuple(chunk.shape)} of {chunk.dtype}"
            )
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
        keys = order_keys(chunk)
        shift = self._shift()
        if self._pass == 0:
            self._count += chunk.shape[1]
            digits = ((keys >> shift) if shift else keys).to(torch.int64) & _DIGIT_MASK
            digits ^= _TOP_BIT
            digits += torch.arange(self.rows, dtype=torch.int64).unsqueeze(1) * NUM_BINS
            counts = torch.bincount(digits.reshape(-1), minlength=self.rows * NUM_BINS).view(self.rows, NUM_BINS)
            for row in range(self.rows):
                self._add((row, 0), counts[row])
            return
        high = keys >> (shift + DIGIT_BITS)
        for row, prefixes in self._groups().items():
            row_keys, row_high = keys[row], high[row]
            for prefix in prefixes:
                selected = row_keys[row_high == prefix]
                if selected.numel() == 0:
                    continue
                digits = ((selected >> shift) if shift else selected).to(torch.int64) & _DIGIT_MASK
                self._add((row, prefix), torch.bincount(digits, minlength=NUM_BINS))

    def _add(self, group: tuple[int, int], counts: torch.Tensor) -> None:
        if group in self._hist:
            self._hist[group] += counts
        else:
            self._hist[group] = counts

    def end_pass(self) -> None:
        """Fix the current digit of every query from the histograms of this pass."""
        if self.done:
            raise ParamError("RadixSelect.end_pass: every pass is already done")
        self._flush()
        if self._pass == 0:
            largest = max((r for row in self._remaining for r in row), default=-1)
            if largest >= self._count:
                raise InputError(
                    f"RadixSelect: rank {largest} is out of range for rows of {self._count} values"
                )
        for row in range(self.rows):
            for prefix in set(self._prefix[row]):
                counts = self._hist.get((row, prefix if self._pass else 0))
                if counts is None:
                    raise InputError(f"RadixSelect: no values seen for row {row} in pass {self._pass}")
                cumulative = torch.cumsum(counts, 0)
                queries = [q for q in range(self.per_row) if self._prefix[row][q] == prefix]
                ranks = torch.tensor([self._remaining[row][q] for q in queries], dtype=torch.int64)
                digits = torch.searchsorted(cumulative, ranks, right=True).tolist()
                below = torch.cat([torch.zeros(1, dtype=torch.int64), cumulative])[digits].tolist()
                for q, digit, before in zip(queries, digits, below, strict=True):
                    self._remaining[row][q] -= before
                    # after the top digit the prefix is the signed value of the digits so far
                    self._prefix[row][q] = digit - _TOP_BIT if self._pass == 0 else prefix * NUM_BINS + digit
        self._hist = {}
        self._pass += 1

    def values(self) -> torch.Tensor:
        """The selected values, `[rows, queries]` of `dtype`."""
        if not self.done:
            raise ParamError(f"RadixSelect.values: {self.num_passes - self._pass} pass(es) still to run")
        out = torch.empty(self.rows, self.per_row, dtype=self.dtype)
        for row in range(self.rows):
            for q in range(self.per_row):
                out[row, q] = _key_to_value(self._prefix[row][q], self.dtype)
        return out


def select_ranks(values: torch.Tensor, ranks: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """In-memory convenience: `values` `[rows, D]`; the value of each 0-based rank per row."""
    select = RadixSelect(ranks, values.dtype)
    while not select.done:
        select.observe(values)
        select.end_pass()
    return select.values()
