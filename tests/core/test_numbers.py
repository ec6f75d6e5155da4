"""Writing Decimals: exact plain notation for what is sent to a venue, trimmed for what people read,
fixed places where money is compared."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading.core.numbers import plain

# Decimals as the record holds them: up to 28 significant digits, any exponent the columns allow.
HELD = st.decimals(allow_nan=False, allow_infinity=False, places=12, min_value=-(10**16), max_value=10**16)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("1.500000000000", "1.5"),
        ("15050.000", "15050"),
        ("1E+2", "100"),
        ("0.00000001", "0.00000001"),
        ("1E-12", "0.000000000001"),
        ("-34.99500", "-34.995"),
        ("0E-12", "0"),
    ],
)
def test_a_value_is_written_exactly_without_exponent_or_trailing_zeros(value: str, written: str) -> None:
    assert plain(Decimal(value)) == written


@pytest.mark.parametrize(
    ("value", "written"),
    [("1.50", "1.50"), ("60000.00000000", "60000.00000000"), ("1E-7", "0.0000001"), ("2E+3", "2000")],
)
def test_untrimmed_a_value_keeps_every_digit_it_is_held_with(value: str, written: str) -> None:
    assert plain(Decimal(value), trim=False) == written


def test_fixed_places_round_and_may_group_and_sign() -> None:
    assert plain(Decimal("35.85291195"), 2) == "35.85"
    assert plain(Decimal("0.1271"), 2) == "0.13"
    assert plain(Decimal("1234567.1"), 8, grouped=True) == "1,234,567.10000000"
    assert plain(Decimal("1234.5"), 2, grouped=True, signed=True) == "+1,234.50"
    assert plain(Decimal("-34.995"), 2, grouped=True, signed=True) == "-35.00"
    assert plain(Decimal(0), 2, signed=True) == "+0.00"


def test_nothing_is_written_as_the_placeholder_asked_for() -> None:
    assert plain(None) == "-"
    assert plain(None, 2, missing="n/a") == "n/a"


@given(HELD)
def test_what_is_written_reads_back_as_the_same_number_and_never_has_an_exponent(value: Decimal) -> None:
    for written in (plain(value), plain(value, trim=False)):
        assert "E" not in written.upper()
        assert Decimal(written) == value
