"""Liquidity taken once: a snapshot less what others reserved and filled."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import levels, lot_amounts, quote
from trading.core import liquidity
from trading.core.fills import fill, filled_amount
from trading.core.liquidity import BookSide, Claim
from trading.core.types import Side

BOOK = quote(
    "bravo", bids=levels(("29990", "0.08"), ("29980", "1")), asks=levels(("30000", "0.08"), ("30010", "1"))
)


def test_what_others_took_is_gone_and_a_level_taken_whole_disappears() -> None:
    taken = {
        (BookSide.ASKS, Decimal(30000)): Decimal("0.08"),
        (BookSide.BIDS, Decimal(29990)): Decimal("0.05"),
    }

    left = liquidity.book_less(BOOK, taken)

    assert left is not None
    assert left.asks == ((Decimal(30010), Decimal(1)),)
    assert left.bids == ((Decimal(29990), Decimal("0.03")), (Decimal(29980), Decimal(1)))


def test_three_buys_of_one_snapshot_walk_what_the_ones_before_left() -> None:
    claims: dict[str, Claim] = {}
    averages = []
    for claimant in ("1", "2", "3"):
        book = liquidity.book_less(BOOK, liquidity.others(claims, claimant))
        assert book is not None
        fills = fill(book.asks, Side.BUY, Decimal("0.05"), Decimal(0))
        claims[claimant] = Claim(filled=liquidity.taking(Side.BUY, fills))
        averages.append(sum(f.price * f.amount for f in fills) / filled_amount(fills))

    # 0.05 at 30,000; the other 0.03 there and 0.02 at 30,010; the rest at 30,010
    assert averages == [Decimal(30000), Decimal(30004), Decimal(30010)]
    assert liquidity.overbooked(BOOK.asks, BookSide.ASKS, liquidity.total(claims.values())) == []


def test_a_claimant_may_use_what_it_reserved_but_not_what_it_already_filled() -> None:
    mine = Claim(
        reserved={(BookSide.ASKS, Decimal(30000)): Decimal("0.05")},
        filled={(BookSide.ASKS, Decimal(30010)): Decimal("0.4")},
    )
    claims = {"7": mine, "8": Claim(reserved={(BookSide.ASKS, Decimal(30000)): Decimal("0.03")})}

    assert liquidity.others(claims, "7") == {
        (BookSide.ASKS, Decimal(30000)): Decimal("0.03"),
        (BookSide.ASKS, Decimal(30010)): Decimal("0.4"),
    }


def test_a_side_taken_whole_leaves_no_book() -> None:
    taken = {(BookSide.ASKS, Decimal(30000)): Decimal("0.08"), (BookSide.ASKS, Decimal(30010)): Decimal(1)}

    assert liquidity.book_less(BOOK, taken) is None


@given(st.lists(lot_amounts(200), min_size=1, max_size=10))
def test_however_many_orders_take_from_a_snapshot_no_level_is_filled_twice(amounts: list[Decimal]) -> None:
    claims: dict[str, Claim] = {}
    for index, amount in enumerate(amounts):
        book = liquidity.book_less(BOOK, liquidity.others(claims, str(index)))
        if book is None:
            break
        fills = fill(book.asks, Side.BUY, amount, Decimal(0))
        claims[str(index)] = Claim(filled=liquidity.taking(Side.BUY, fills))

    assert liquidity.overbooked(BOOK.asks, BookSide.ASKS, liquidity.total(claims.values())) == []


def test_books_less_what_is_taken_leave_out_a_book_taken_whole_and_are_the_same_books_when_nothing_is() -> (
    None
):
    books = {
        "a": quote("a", levels(("99", "1")), levels(("100", "1"))),
        "b": quote("b", levels(("101", "1")), levels(("102", "1"))),
    }

    assert liquidity.books_less(books, {"a": {}, "b": {}}) is books
    left = liquidity.books_less(books, {"a": {(BookSide.ASKS, Decimal(100)): Decimal(1)}, "b": {}})
    assert set(left) == {"b"}  # a's only ask is gone: nothing to buy there
    left = liquidity.books_less(books, {"b": {(BookSide.BIDS, Decimal(101)): Decimal("0.4")}})
    assert left["b"].bids == ((Decimal(101), Decimal("0.6")),)
    assert left["a"] is books["a"]
