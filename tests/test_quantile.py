"""Radix select against torch.sort / torch.kthvalue."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weaving.errors import InputError
from weaving.quantile import RadixSelect, TailSelect, order_keys, order_statistics, select_ranks

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _values(seed: int, rows: int, length: int, dtype: torch.dtype, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, length, generator=g, dtype=torch.float64) * 10
    if ties:
        values = torch.round(values)  # many duplicates, both signed zeros below
        values[:, ::3] = -0.0
    return values.to(dtype)


@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 4),
    length=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    ties=st.booleans(),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_select_matches_sort(seed, rows, length, dtype, ties, data) -> None:
    values = _values(seed, rows, length, dtype, ties)
    per_row = data.draw(st.integers(1, 3))
    ranks = [
        [data.draw(st.sampled_from([0, length - 1, length // 2]) | st.integers(0, length - 1)) for _ in range(per_row)]
        for _ in range(rows)
    ]
    ordered = torch.sort(values.double(), dim=1).values
    expected = torch.tensor([[ordered[r, k].item() for k in row] for r, row in enumerate(ranks)], dtype=torch.float64)
    got = select_ranks(values, ranks)
    assert got.dtype == dtype
    assert torch.equal(got.double(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kthvalue_and_passes_per_width(dtype) -> None:
    values = _values(7, 3, 1000, dtype, ties=False)
    k = 137
    got = select_ranks(values, [[k - 1]] * 3)[:, 0]
    assert torch.equal(got.double(), torch.kthvalue(values.double(), k, dim=1).values)
    assert RadixSelect([[0]], dtype).num_passes == {16: 1, 32: 2, 64: 4}[torch.finfo(dtype).bits]


def test_chunks_in_any_order_give_the_same_result() -> None:
    values = _values(3, 2, 5000, torch.float32, ties=True)
    ranks = [[0, 2500, 4999], [17, 17, 4000]]
    whole = select_ranks(values, ranks)
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    shuffled = values[:, perm]
    select = RadixSelect(ranks, torch.float32)
    bounds = [0, 1, 7, 7, 1000, 3000, 5000]  # includes an empty chunk
    while not select.done:
        for lo, hi in reversed(list(zip(bounds[:-1], bounds[1:]))):
            select.observe(shuffled[:, lo:hi])
        select.end_pass()
    assert torch.equal(select.values(), whole)


def test_large_chunks_skip_the_buffer() -> None:
    values = _values(5, 1, RadixSelect.BUFFER_ELEMENTS + 11, torch.float32, ties=False)
    ranks = [[0, 12345, values.shape[1] - 1]]
    ordered = torch.sort(values, dim=1).values
    assert torch.equal(select_ranks(values, ranks), ordered[:, ranks[0]])


def test_order_keys_preserve_float_order() -> None:
    values = torch.tensor([-float("inf"), -3.5, -1e-3, -0.0, 0.0, 1e-3, 2.0, float("inf")])
    for dtype in DTYPES:
        keys = order_keys(values.to(dtype)).tolist()
        assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_rank_out_of_range_is_an_error() -> None:
    with pytest.raises(InputError, match="rank 10 is out of range"):
        select_ranks(torch.zeros(1, 10), [[10]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_selection_equals_selection_of_abs(dtype) -> None:
    values = _values(9, 2, 777, dtype, ties=True)
    ranks = [[0, 388, 776], [5, 700, 776]]
    assert torch.equal(select_ranks(values, ranks, magnitude=True), select_ranks(values.abs(), ranks))
    ordered = torch.sort(values.abs().double(), dim=1).values
    assert torch.equal(select_ranks(values, ranks, magnitude=True).double(), torch.stack([ordered[r, ranks[r]] for r in range(2)]))


@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 3),
    length=st.integers(1, 400),
    ties=st.booleans(),
    order=st.sampled_from(["random", "ascending", "descending"]),
    chunk=st.integers(1, 150),
    magnitude=st.booleans(),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_tail_select_matches_sort(seed, rows, length, ties, order, chunk, magnitude, data) -> None:
    values = _values(seed, rows, length, torch.float32, ties)
    if order != "random":  # sorted input: every new value beats the bound (worst case)
        values = torch.sort(values, dim=1, descending=order == "descending").values
    near = st.integers(0, min(3, length - 1)) | st.integers(max(0, length - 4), length - 1)
    ranks = [[data.draw(near), data.draw(near)] for _ in range(rows)]
    select = TailSelect(ranks, torch.float32, length)
    for lo in range(0, length, chunk):
        select.observe(values[:, lo : lo + chunk], magnitude=magnitude)
    select.end_pass()
    ordered = torch.sort(values.abs() if magnitude else values, dim=1).values
    assert torch.equal(select.values(), torch.stack([ordered[r, ranks[r]] for r in range(rows)]))


def test_tail_select_prunes_to_a_bounded_candidate_set() -> None:
    values = torch.arange(200_000, dtype=torch.float32).unsqueeze(0)  # ascending: worst case
    select = TailSelect([[199_000]], torch.float32, 200_000)
    for lo in range(0, 200_000, 1000):
        select.observe(values[:, lo : lo + 1000])
        assert sum(v.numel() for v in select._tails[1][0].above) <= 2 * max(1000, 1 << 16) + 1000
    select.end_pass()
    assert select.values().item() == 199_000.0


def test_order_statistics_picks_tails_near_the_ends_only() -> None:
    assert isinstance(order_statistics([[5, 990]], torch.float32, 1000), TailSelect)
    assert isinstance(order_statistics([[500]], torch.float32, 1000), RadixSelect)
    assert isinstance(order_statistics([[990]] * 4, torch.float32, 1000, tail_budget=10), RadixSelect)
    with pytest.raises(InputError, match="expected 10"):
        select = TailSelect([[9]], torch.float32, 10)
        select.observe(torch.zeros(1, 9))
        select.end_pass()
