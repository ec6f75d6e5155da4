"""The one fill model: walk a book side, return the fills with fees.

Paper trading, the strategy's sizing and the backtest all fill through `fill`; nothing else in the
project decides what a market order would have paid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from trading.core.types import BPS, ZERO, Fill, Level, Side


def within(price: Decimal, side: Side, limit: Decimal | None) -> bool:
    """Whether an order on `side` limited to `limit` (None: no limit) may take at `price`."""
    if limit is None:
        return True
    return price <= limit if side is Side.BUY else price >= limit


def fill(
    levels: Sequence[Level],
    side: Side,
    amount: Decimal,
    fee_rate: Decimal,
    limit: Decimal | None = None,
) -> list[Fill]:
    """Take up to `amount` from `levels` (best first), never past `limit`.

    A buy walks asks, a sell walks bids. Each touched level gives one Fill whose fee is
    `fee_rate` of its notional. Returns fewer than `amount` in total when the book (or the limit)
    runs out; returns [] for a non-positive amount.
    """
    fills: list[Fill] = []
    remaining = amount
    for price, available in levels:
        if remaining <= ZERO or not within(price, side, limit):
            break
        taken = available if available < remaining else remaining
        fills.append(Fill(price=price, amount=taken, fee=price * taken * fee_rate))
        remaining -= taken
    return fills


def reached(levels: Sequence[Level], amount: Decimal) -> Decimal:
    """The price of the last level a positive `amount` taken from `levels` (best first) reaches,
    or of the last level when they run out: the price of `fill`'s last fill without a limit.
    Raises IndexError for no levels."""
    remaining = amount
    for price, available in levels:
        remaining -= available if available < remaining else remaining
        if remaining <= ZERO:
            return price
    return levels[-1][0]


def filled_amount(fills: Iterable[Fill]) -> Decimal:
    return sum((f.amount for f in fills), ZERO)


def notional(fills: Iterable[Fill]) -> Decimal:
    return sum((f.notional for f in fills), ZERO)


def fees_paid(fills: Iterable[Fill]) -> Decimal:
    return sum((f.fee for f in fills), ZERO)


def totals(fills: Iterable[Fill]) -> tuple[Decimal, Decimal, Decimal]:
    """`filled_amount`, `notional` and `fees_paid` of `fills`, in one pass."""
    amount = value = fee = ZERO
    for each in fills:
        amount += each.amount
        value += each.notional
        fee += each.fee
    return amount, value, fee


def average_price(fills: Sequence[Fill]) -> Decimal:
    """Volume-weighted average price of `fills`; raises ValueError when nothing filled."""
    return average(filled_amount(fills), notional(fills))


def average(amount: Decimal, value: Decimal) -> Decimal:
    """The average price of `amount` bought or sold for `value`; raises ValueError when the
    amount is not positive."""
    if amount <= ZERO:
        raise ValueError("no fills to average")
    return value / amount


def tick_of(price: Decimal) -> Decimal:
    """The coarsest tick `price` can be on, judged from its significant decimals (1 at most):
    a safe stand-in for a venue's tick when it is not known."""
    return Decimal(1).scaleb(min(price.normalize().as_tuple().exponent, 0))  # type: ignore[arg-type]


def guard_price(price: Decimal, side: Side, bps: Decimal, tick: Decimal) -> Decimal:
    """The limit of an order that may pay up to `bps` worse than `price`: above it for a buy,
    below it for a sell, rounded back toward `price` onto a multiple of `tick`, so the allowance
    is never exceeded."""
    if side is Side.BUY:
        return (price * (1 + bps / BPS) / tick).to_integral_value(ROUND_DOWN) * tick
    return (price * (1 - bps / BPS) / tick).to_integral_value(ROUND_UP) * tick
