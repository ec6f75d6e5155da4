"""The one fill model: what a market order (or a limit order taking liquidity) gets from a book."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import CENT, LOT, book_side, levels, lot_amounts
from trading.core.fills import average_price, fees_paid, fill, filled_amount, notional
from trading.core.types import Fill, Level, Side

ASKS = levels(("100.00", "0.5"), ("100.50", "1"), ("101.00", "2"))
BIDS = levels(("99.50", "0.3"), ("99.00", "1"), ("98.00", "2"))
FEE = Decimal("0.001")


def test_a_buy_takes_the_cheapest_asks_first_and_part_of_the_last_level_it_needs() -> None:
    fills = fill(ASKS, Side.BUY, Decimal("1.2"), FEE)

    assert fills == [
        Fill(price=Decimal("100.00"), amount=Decimal("0.5"), fee=Decimal("0.0500000")),
        Fill(price=Decimal("100.50"), amount=Decimal("0.7"), fee=Decimal("0.0703500")),
    ]
    assert notional(fills) == Decimal("120.35")
    assert fees_paid(fills) == Decimal("0.12035")
    assert average_price(fills) == Decimal("120.35") / Decimal("1.2")


def test_a_sell_takes_the_highest_bids_first() -> None:
    fills = fill(BIDS, Side.SELL, Decimal("0.8"), FEE)

    assert [(f.price, f.amount) for f in fills] == [
        (Decimal("99.50"), Decimal("0.3")),
        (Decimal("99.00"), Decimal("0.5")),
    ]
    assert notional(fills) == Decimal("79.35")


def test_a_limit_stops_the_walk_before_any_worse_price() -> None:
    buy = fill(ASKS, Side.BUY, Decimal("10"), FEE, limit=Decimal("100.50"))
    sell = fill(BIDS, Side.SELL, Decimal("10"), FEE, limit=Decimal("99.25"))

    assert filled_amount(buy) == Decimal("1.5")
    assert max(f.price for f in buy) == Decimal("100.50")
    assert sell == [Fill(Decimal("99.50"), Decimal("0.3"), Decimal("99.50") * Decimal("0.3") * FEE)]


def test_a_limit_better_than_the_best_price_fills_nothing() -> None:
    assert fill(ASKS, Side.BUY, Decimal("1"), FEE, limit=Decimal("99.99")) == []


def test_an_order_larger_than_the_book_fills_what_the_book_holds() -> None:
    fills = fill(ASKS, Side.BUY, Decimal("100"), FEE)

    assert filled_amount(fills) == Decimal("3.5")


@pytest.mark.parametrize("amount", [Decimal(0), Decimal("-1")])
def test_a_non_positive_amount_fills_nothing(amount: Decimal) -> None:
    assert fill(ASKS, Side.BUY, amount, FEE) == []


def test_an_average_of_nothing_is_an_error_not_a_zero_price() -> None:
    with pytest.raises(ValueError, match="no fills"):
        average_price([])


# --- properties over generated books ---------------------------------------------------------------

fee_rates = st.sampled_from(["0", "0.0001", "0.001", "0.0026", "0.01"]).map(Decimal)
sides = st.sampled_from(list(Side))


@st.composite
def side_books(draw: st.DrawFn) -> tuple[Side, tuple[Level, ...]]:
    side = draw(sides)
    best = draw(st.integers(10_000, 10_000_000)) * CENT
    return side, draw(book_side(best, rising=side is Side.BUY))


def _within(price: Decimal, side: Side, limit: Decimal | None) -> bool:
    return limit is None or (price <= limit if side is Side.BUY else price >= limit)


def _limits(book: tuple[Level, ...]) -> st.SearchStrategy[Decimal | None]:
    """No limit, or one somewhere around the book's prices."""
    low, high = min(p for p, _ in book), max(p for p, _ in book)
    return st.none() | st.integers(int((low - 5) / CENT), int((high + 5) / CENT)).map(lambda n: n * CENT)


@given(data=st.data(), amount=st.decimals("-1", "20", places=5), fee_rate=fee_rates)
def test_fills_conserve_quantity_and_never_cross_the_limit(
    data: st.DataObject, amount: Decimal, fee_rate: Decimal
) -> None:
    side, book = data.draw(side_books())
    limit = data.draw(_limits(book))

    fills = fill(book, side, amount, fee_rate, limit)

    depth_within_limit = sum((size for price, size in book if _within(price, side, limit)), Decimal(0))
    assert filled_amount(fills) == max(Decimal(0), min(amount, depth_within_limit))
    assert all(_within(f.price, side, limit) for f in fills)
    assert all(f.amount > 0 for f in fills)


@given(data=st.data(), amount=st.decimals("0.00001", "20", places=5), fee_rate=fee_rates)
def test_fills_conserve_money_and_charge_the_fee_rate_exactly(
    data: st.DataObject, amount: Decimal, fee_rate: Decimal
) -> None:
    side, book = data.draw(side_books())

    fills = fill(book, side, amount, fee_rate)

    total = notional(fills)
    assert total == sum((f.price * f.amount for f in fills), Decimal(0))
    assert fees_paid(fills) == fee_rate * total
    assert all(f.fee == fee_rate * f.price * f.amount for f in fills)
    # The average is a quotient, exact to Decimal's 28 significant digits and no further.
    assert abs(average_price(fills) * filled_amount(fills) - total) <= total * Decimal("1e-26")
    prices = [f.price for f in fills]
    assert min(prices) <= average_price(fills) <= max(prices)


@given(data=st.data(), lots=st.integers(0, 3_000))
def test_vwap_matches_a_brute_force_walk_lot_by_lot(data: st.DataObject, lots: int) -> None:
    """Expand the book into single lots, take the best `lots` of them, and price each one."""
    side, book = data.draw(side_books())
    limit = data.draw(_limits(book))
    lot_prices = [
        price for price, size in book if _within(price, side, limit) for _ in range(int(size / LOT))
    ]
    taken = lot_prices[:lots]

    fills = fill(book, side, lots * LOT, Decimal(0), limit)

    assert filled_amount(fills) == len(taken) * LOT
    assert notional(fills) == sum(taken, Decimal(0)) * LOT
    if taken:
        assert average_price(fills) == sum(taken, Decimal(0)) / len(taken)


@given(data=st.data(), amount=lot_amounts(3_000))
def test_a_bigger_order_never_gets_a_better_average(data: st.DataObject, amount: Decimal) -> None:
    side, book = data.draw(side_books())
    smaller, larger = fill(book, side, amount, Decimal(0)), fill(book, side, amount + LOT, Decimal(0))

    if side is Side.BUY:
        assert average_price(larger) >= average_price(smaller)
    else:
        assert average_price(larger) <= average_price(smaller)
