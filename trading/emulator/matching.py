"""The emulator's matching venue: accounts, balances and orders matched against the served book.

Dialect-free: a dialect turns requests into calls here and words the outcome (or the Refusal) the
way its venue does. Limit orders take what the venue's current book offers up to their limit
price; what is left is cancelled (IOC) or rests unmatched (GTC). Fees are charged in the quote
currency at the venue's taker rate. Callers hold the venue's lock.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server imports this module; only the types flow back
    from trading.emulator.server import EmulatedVenue, Market

Level = tuple[Decimal, Decimal]

ZERO = Decimal(0)
DEFAULT_TAKER_FEE = Decimal("0.001")


class Refusal(StrEnum):
    """Why the venue refused a request; each dialect words these its own way."""

    DUPLICATE = "duplicate client order id"
    INSUFFICIENT = "insufficient balance"
    REJECTED = "rejected"
    UNKNOWN_ORDER = "unknown order"


class Refused(Exception):
    def __init__(self, refusal: Refusal, reason: str = "") -> None:
        super().__init__(reason or refusal.value)
        self.refusal = refusal
        self.reason = reason or refusal.value


class OrderState(StrEnum):
    OPEN = "open"
    FILLED = "filled"
    CANCELED = "canceled"  # by request
    EXPIRED = "expired"  # an IOC order's unfilled remainder, cancelled by the venue


@dataclass(frozen=True)
class OrderFault:
    """Injected order trouble: refuse orders with `reject` (a reason; "insufficient balance" is
    worded as the venue words missing funds), fill at most
    `fill_fraction` of each order, or leave orders open and fill them when a cancel arrives
    (`fill_after_cancel`: the venue matched before it saw the cancel)."""

    reject: str | None = None
    fill_fraction: Decimal | None = None
    fill_after_cancel: bool = False


@dataclass(frozen=True)
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: Decimal
    amount: Decimal
    fee: Decimal
    time_ms: int

    @property
    def cost(self) -> Decimal:
        return self.price * self.amount


@dataclass
class Order:
    order_id: int
    client_order_id: str
    market: Market
    side: str  # "buy" or "sell"
    price: Decimal
    amount: Decimal
    time_in_force: str
    created_ms: int
    state: OrderState = OrderState.OPEN
    trades: list[Trade] = field(default_factory=list)
    closed_ms: int | None = None

    @property
    def filled(self) -> Decimal:
        return sum((trade.amount for trade in self.trades), ZERO)

    @property
    def cost(self) -> Decimal:
        return sum((trade.cost for trade in self.trades), ZERO)

    @property
    def fee(self) -> Decimal:
        return sum((trade.fee for trade in self.trades), ZERO)

    @property
    def average(self) -> Decimal:
        return self.cost / self.filled if self.filled else ZERO


@dataclass
class Account:
    key: str
    secret: str
    balances: dict[str, Decimal]
    orders: list[Order] = field(default_factory=list)
    last_nonce: int = 0

    def free(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO)

    def order(self, *, client_order_id: str | None = None, order_id: int | None = None) -> Order:
        """The order with this client id or venue id; raises Refused(UNKNOWN_ORDER)."""
        for order in self.orders:
            if order.client_order_id == client_order_id or order.order_id == order_id:
                return order
        raise Refused(Refusal.UNKNOWN_ORDER)

    def trades(self, symbol: str) -> list[Trade]:
        return [trade for order in self.orders if order.market.symbol == symbol for trade in order.trades]


_order_ids = itertools.count(1_000_001)
_trade_ids = itertools.count(5_000_001)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def reachable(side: str, limit: Decimal, bids: tuple[Level, ...], asks: tuple[Level, ...]) -> list[Level]:
    """The book levels an order may take: asks at or below a buy's limit, bids at or above a
    sell's, best first."""
    if side == "buy":
        return [level for level in asks if level[0] <= limit]
    return [level for level in bids if level[0] >= limit]


def take(levels: list[Level], amount: Decimal) -> list[Level]:
    """Walk `levels` until `amount` is taken: the (price, amount) executed at each."""
    taken: list[Level] = []
    left = amount
    for price, offered in levels:
        if left <= ZERO:
            break
        size = min(left, offered)
        if size > ZERO:
            taken.append((price, size))
            left -= size
    return taken


def check_funds(account: Account, market: Market, side: str, price: Decimal, amount: Decimal) -> None:
    """Refuse an order the account cannot pay for at its limit (fees included on a buy)."""
    if side == "buy":
        needed, asset = price * amount, market.quote
    else:
        needed, asset = amount, market.base
    if account.free(asset) < needed:
        raise Refused(Refusal.INSUFFICIENT)


def settle(account: Account, order: Order, executions: list[Level], fee_rate: Decimal) -> None:
    """Book `executions` as trades of `order` and move the account's balances."""
    stamp = now_ms()
    base, quote = order.market.base, order.market.quote
    sign = 1 if order.side == "buy" else -1
    for price, size in executions:
        fee = price * size * fee_rate
        symbol = order.market.symbol
        trade = Trade(next(_trade_ids), order.order_id, symbol, order.side, price, size, fee, stamp)
        order.trades.append(trade)
        account.balances[base] = account.free(base) + sign * size
        account.balances[quote] = account.free(quote) - sign * trade.cost - fee


def capped(amount: Decimal, fraction: Decimal | None, step: Decimal) -> Decimal:
    """`amount`, or the injected fraction of it rounded down to the market's step."""
    if fraction is None:
        return amount
    return (amount * fraction / step).to_integral_value(ROUND_DOWN) * step


def place(
    account: Account,
    market: Market,
    book: tuple[tuple[Level, ...], tuple[Level, ...]],
    *,
    side: str,
    price: Decimal,
    amount: Decimal,
    client_order_id: str,
    time_in_force: str,
    fee_rate: Decimal,
    fault: OrderFault,
) -> Order:
    """Place a limit order and match it at once. Raises Refused for a duplicate client order id,
    missing funds or an injected rejection."""
    if any(order.client_order_id == client_order_id for order in account.orders):
        raise Refused(Refusal.DUPLICATE)
    if fault.reject is not None:
        refusal = Refusal.INSUFFICIENT if fault.reject == Refusal.INSUFFICIENT.value else Refusal.REJECTED
        raise Refused(refusal, fault.reject)
    check_funds(account, market, side, price, amount)
    order = Order(next(_order_ids), client_order_id, market, side, price, amount, time_in_force, now_ms())
    account.orders.append(order)
    if fault.fill_after_cancel:
        return order
    bids, asks = book
    wanted = capped(amount, fault.fill_fraction, market.step)
    settle(account, order, take(reachable(side, price, bids, asks), wanted), fee_rate)
    if order.filled >= order.amount:
        close(order, OrderState.FILLED)
    elif time_in_force != "GTC":
        close(order, OrderState.EXPIRED)
    return order


def close(order: Order, state: OrderState) -> None:
    order.state = state
    order.closed_ms = now_ms()


def cancel(
    account: Account,
    order: Order,
    book: tuple[tuple[Level, ...], tuple[Level, ...]],
    *,
    fee_rate: Decimal,
    fault: OrderFault,
) -> Order:
    """Cancel an open order. Raises Refused(UNKNOWN_ORDER) for a closed one, as venues do; under
    the fill-after-cancel fault the order fills against the book first, and the cancel then finds
    it closed."""
    if order.state is not OrderState.OPEN:
        raise Refused(Refusal.UNKNOWN_ORDER)
    if fault.fill_after_cancel:
        bids, asks = book
        left = order.amount - order.filled
        settle(account, order, take(reachable(order.side, order.price, bids, asks), left), fee_rate)
        close(order, OrderState.FILLED if order.filled >= order.amount else OrderState.EXPIRED)
        raise Refused(Refusal.UNKNOWN_ORDER)
    close(order, OrderState.CANCELED)
    return order


@dataclass(frozen=True)
class OrderTerms:
    """A new limit order as a dialect read it from the request."""

    side: str
    price: Decimal
    amount: Decimal
    time_in_force: str
    client_order_id: str


def place_on(venue: EmulatedVenue, account: Account, market: Market, terms: OrderTerms) -> Order:
    """place() against the venue's current book, fee rate and injected order fault."""
    book = venue.book(market.symbol)
    return place(
        account,
        market,
        (book.bids, book.asks),
        side=terms.side,
        price=terms.price,
        amount=terms.amount,
        client_order_id=terms.client_order_id or f"emulator-{time.time_ns()}",
        time_in_force=terms.time_in_force,
        fee_rate=venue.taker_fee,
        fault=venue.fault.orders,
    )


def cancel_on(venue: EmulatedVenue, account: Account, order: Order) -> Order:
    """cancel() against the venue's current book, fee rate and injected order fault."""
    book = venue.book(order.market.symbol)
    return cancel(account, order, (book.bids, book.asks), fee_rate=venue.taker_fee, fault=venue.fault.orders)
