"""parse_search_space: ranges inclusive of both ends, explicit lists, CLI strings, errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weaving import ParamError, parse_search_space


def test_paper_ranges() -> None:
    assert parse_search_space([0.1, 1.0, 0.1]) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert len(parse_search_space([0.1, 1.5, 0.1])) == 15
    assert len(parse_search_space([0.1, 2.5, 0.1])) == 25
    assert parse_search_space([0.5, 2.0, 0.1])[-1] == 2.0 and len(parse_search_space([0.5, 2.0, 0.1])) == 16
    assert parse_search_space((0.1, 2.0, 0.1))[-3:] == [1.8, 1.9, 2.0]


@given(
    start=st.integers(-300, 300),
    count=st.integers(0, 40),
    step=st.integers(1, 50),
)
@settings(max_examples=100, deadline=None)
def test_ranges_are_the_decimal_grid(start: int, count: int, step: int) -> None:
    # start, step in hundredths: the values are exactly the decimals start + i*step
    a, s = Decimal(start) / 100, Decimal(step) / 100
    b = a + count * s
    expected = [float(a + i * s) for i in range(count + 1)]
    assert parse_search_space([float(a), float(b), float(s)]) == expected
    assert parse_search_space(f"{a}:{b}:{s}") == expected
    assert parse_search_space({"start": float(a), "stop": float(b), "step": float(s)}) == expected


def test_explicit_lists_and_strings() -> None:
    assert parse_search_space([0.3]) == [0.3]
    assert parse_search_space([0.1, 0.5]) == [0.1, 0.5]
    assert parse_search_space([1, 2, 3, 4]) == [1.0, 2.0, 3.0, 4.0]
    assert parse_search_space({"values": [0.1, 0.2, 0.5]}) == [0.1, 0.2, 0.5]
    assert parse_search_space("0.1,0.2,0.5") == [0.1, 0.2, 0.5]
    assert parse_search_space(" 0.1 , 0.3 ") == [0.1, 0.3]
    assert parse_search_space("0.1:1.5:0.1")[-1] == 1.5
    assert parse_search_space("0.7") == [0.7]
    assert parse_search_space(1) == [1.0]
    assert parse_search_space([1.0, 1.0, 0.1]) == [1.0]  # start == stop: one value


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "empty"),
        ("", "empty"),
        ({"values": []}, "empty"),
        ([0.1, float("nan")], "must be finite"),
        ("0.1,inf", "must be finite"),
        ([0.1, 1.0, 0.0], "step must be > 0"),
        ("0.1:1.0:-0.1", "step must be > 0"),
        ([1.0, 0.1, 0.1], "stop (0.1) must be >= start (1.0)"),
        ([0.1, 1.0, 0.2], "not a whole number of steps"),
        ("0.1:1.0", "start:stop:step"),
        ("0.1,abc", "must be a number"),
        ([0.1, True], "must be a number"),
        ({"start": 0.1}, "{start, stop, step}"),
        (None, "expected [start, stop, step]"),
    ],
)
def test_errors(spec, message: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_search_space(spec)
    assert message in str(info.value)
