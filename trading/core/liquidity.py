"""Liquidity taken once: a book snapshot less what decisions and fills have already taken from it.

A level of a snapshot can be promised to one order only. What is taken is kept per snapshot (venue,
symbol, sequence number) by price, as reserved (promised to an order about to be sent) or filled
(used by an order); a newer snapshot starts afresh, because the venue's own book then shows what
our orders took.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from trading.core.types import ZERO, Decision, Fill, Level, Quote, Side


class BookSide(StrEnum):
    BIDS = "b"  # what a sale takes
    ASKS = "a"  # what a purchase takes


def taken_side(side: Side) -> BookSide:
    """The side of the book an order on `side` takes from."""
    return BookSide.ASKS if side is Side.BUY else BookSide.BIDS


Taken = Mapping[tuple[BookSide, Decimal], Decimal]  # (book side, price) -> amount taken


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claimant (an opportunity) holds of one snapshot: `reserved` for an order it is
    about to send, `filled` by orders it sent."""

    reserved: dict[tuple[BookSide, Decimal], Decimal] = field(default_factory=dict)
    filled: dict[tuple[BookSide, Decimal], Decimal] = field(default_factory=dict)


def total(claims: Iterable[Claim]) -> dict[tuple[BookSide, Decimal], Decimal]:
    """Everything taken from a snapshot by the given claims, by (side, price)."""
    taken: dict[tuple[BookSide, Decimal], Decimal] = {}
    for claim in claims:
        _add(taken, claim.reserved)
        _add(taken, claim.filled)
    return taken


def _add(taken: dict[tuple[BookSide, Decimal], Decimal], part: Taken) -> None:
    for key, amount in part.items():
        taken[key] = taken.get(key, ZERO) + amount


def others(claims: Mapping[str, Claim], claimant: str | None) -> dict[tuple[BookSide, Decimal], Decimal]:
    """What the claims other than `claimant`'s reservation took: everything but the liquidity the
    claimant itself set aside (its own fills stay taken, so a retry cannot reuse them)."""
    taken: dict[tuple[BookSide, Decimal], Decimal] = {}
    for name, claim in claims.items():
        if name != claimant:
            _add(taken, claim.reserved)
            _add(taken, claim.filled)
    mine = claims.get(claimant or "")
    if mine is not None:
        _add(taken, mine.filled)
    return taken


def remaining(levels: Sequence[Level], side: BookSide, taken: Taken) -> tuple[Level, ...]:
    """`levels` less what is taken at each price; levels taken whole disappear."""
    left = []
    for price, amount in levels:
        rest = amount - taken.get((side, price), ZERO)
        if rest > ZERO:
            left.append((price, rest))
    return tuple(left)


def book_less(book: Quote, taken: Taken) -> Quote | None:
    """The snapshot as what is still there to take, or None when a side has nothing left."""
    if not taken:
        return book
    bids = remaining(book.bids, BookSide.BIDS, taken)
    asks = remaining(book.asks, BookSide.ASKS, taken)
    if not bids or not asks:
        return None
    # Built directly: dataclasses.replace costs more than the rest of this function.
    return Quote(book.venue, book.symbol, bids, asks, book.received_ts, book.seq, book.venue_ts)


def books_less(books: Mapping[str, Quote], taken: Mapping[str, Taken]) -> Mapping[str, Quote]:
    """`books` (venue to snapshot) with what is `taken` from some of them (venue to what was taken)
    removed; a book taken whole is left out. `books` itself when nothing is taken."""
    if not any(taken.values()):
        return books
    left = dict(books)
    for name, took in taken.items():
        book = book_less(books[name], took)
        if book is None:
            del left[name]
        else:
            left[name] = book
    return left


def involved(decisions: Iterable[Decision]) -> list[str]:
    """The venues of `decisions`, each once, sorted."""
    return sorted({name for d in decisions for name in (d.buy_venue, d.sell_venue)})


def taking(side: Side, fills: Iterable[Fill]) -> dict[tuple[BookSide, Decimal], Decimal]:
    """The levels `fills` of an order on `side` took, by (book side, price)."""
    book_side = taken_side(side)
    took: dict[tuple[BookSide, Decimal], Decimal] = {}
    for fill in fills:
        key = (book_side, fill.price)
        took[key] = took.get(key, ZERO) + fill.amount
    return took


def overbooked(levels: Sequence[Level], side: BookSide, taken: Taken) -> list[Decimal]:
    """Prices of `levels` at which more is taken than the snapshot offered (none, if the rule
    holds)."""
    offered = dict(levels)
    return sorted(
        price
        for (book_side, price), amount in taken.items()
        if book_side is side and amount > offered.get(price, ZERO)
    )
