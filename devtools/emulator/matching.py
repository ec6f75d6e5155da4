"""The emulator's matching venue: accounts, balances and orders matched against the served book.

Dialect-free: a dialect turns requests into calls here and words the outcome (or the Refusal) the
way its venue does. Limit orders take what the venue's current book offers up to their limit
price; what is left is cancelled (IOC) or rests unmatched (GTC). Fees are charged at the venue's
taker rate in the asset the account (or the order) pays them in (see `fees`). A client order id
is refused only while an open order carries it, as Binance and Kraken enforce it: once that order
is closed the id may trade again. Callers hold the venue's lock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from devtools.emulator.fees import QUOTE, Charge, Fees, charge, missing_price

if TYPE_CHECKING:  # the venue imports this module; only the types flow back
    from devtools.emulator.venue import EmulatedVenue, Market

Level = tuple[Decimal, Decimal]
Book = tuple[tuple[Level, ...], tuple[Level, ...]]

ZERO = Decimal(0)
DEFAULT_TAKER_FEE = Decimal("0.001")


class Refusal(StrEnum):
    """Why the venue refused a request; each dialect words these its own way."""

    CANCEL_PENDING = "cancel pending"
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
    worded as the venue words missing funds), fill at most `fill_fraction` of each order, or
    leave orders open and fill them when a cancel arrives (`fill_after_cancel`: the venue matched
    before it saw the cancel). A cancel can be acknowledged and left pending: the order still
    reads as open for `cancel_pending_s` seconds and `cancel_pending_reads` lookups after it, and
    only then reads canceled (or filled, under fill-after-cancel)."""

    reject: str | None = None
    fill_fraction: Decimal | None = None
    fill_after_cancel: bool = False
    cancel_pending_s: float = 0.0
    cancel_pending_reads: int = 0

    @property
    def delays_cancels(self) -> bool:
        return self.cancel_pending_s > 0 or self.cancel_pending_reads > 0


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
    fee_asset: str

    @property
    def cost(self) -> Decimal:
        return self.price * self.amount


@dataclass
class PendingCancel:
    """A cancel the venue acknowledged but has not carried out. It lands once the monotonic clock
    passes `due_ns` and `reads` more lookups of the order have been answered; the order then
    takes the client id `relabel` if it was cancelled (Binance frees the id that way), and is
    first matched against the book when `fill` (the venue matched before the cancel landed)."""

    due_ns: int
    reads: int
    relabel: str | None
    fill: bool

    def due(self, now_ns: int) -> bool:
        return now_ns >= self.due_ns and self.reads <= 0


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
    fee_asset: str = QUOTE  # how its fees are paid (a fees mode or an asset code)
    state: OrderState = OrderState.OPEN
    trades: list[Trade] = field(default_factory=list)
    closed_ms: int | None = None
    pending_cancel: PendingCancel | None = None

    @property
    def filled(self) -> Decimal:
        return sum((trade.amount for trade in self.trades), ZERO)

    @property
    def cost(self) -> Decimal:
        return sum((trade.cost for trade in self.trades), ZERO)

    @property
    def fee(self) -> Decimal:
        """The fees of its trades, summed whatever their asset (one asset unless a third-asset
        fee fell back to the received asset)."""
        return sum((trade.fee for trade in self.trades), ZERO)

    @property
    def average(self) -> Decimal:
        return self.cost / self.filled if self.filled else ZERO


@dataclass
class Account:
    """Balances and orders (oldest first) of one API key; `fee_asset` is how its orders pay fees
    unless an order says otherwise."""

    key: str
    secret: str
    balances: dict[str, Decimal]
    fee_asset: str = QUOTE
    orders: list[Order] = field(default_factory=list)
    last_nonce: int = 0

    def free(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO)

    def latest(self, client_order_id: str, symbol: str | None = None) -> Order:
        """The most recent order carrying this client id (on `symbol` when given): the open one
        when there is one, since no other order may take an open order's id. Raises
        Refused(UNKNOWN_ORDER)."""
        for order in reversed(self.orders):
            if order.client_order_id == client_order_id and symbol in (None, order.market.symbol):
                return order
        raise Refused(Refusal.UNKNOWN_ORDER)

    def newest(self, symbol: str | None = None) -> Order:
        """The account's most recent order (on `symbol` when given); raises Refused(UNKNOWN_ORDER)."""
        for order in reversed(self.orders):
            if symbol in (None, order.market.symbol):
                return order
        raise Refused(Refusal.UNKNOWN_ORDER)

    def by_id(self, order_id: int) -> Order:
        """The order with this venue id; raises Refused(UNKNOWN_ORDER)."""
        for order in self.orders:
            if order.order_id == order_id:
                return order
        raise Refused(Refusal.UNKNOWN_ORDER)

    def holds_open(self, client_order_id: str) -> bool:
        return any(o.state is OrderState.OPEN and o.client_order_id == client_order_id for o in self.orders)

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
    """Refuse an order the account cannot pay for at its limit (its fee is not reserved)."""
    if side == "buy":
        needed, asset = price * amount, market.quote
    else:
        needed, asset = amount, market.base
    if account.free(asset) < needed:
        raise Refused(Refusal.INSUFFICIENT)


def settle(account: Account, order: Order, executions: list[Level], fees: Fees) -> None:
    """Book `executions` as trades of `order` and move the account's balances: the base and
    the quote in full, and each fee out of the asset it was charged in."""
    stamp = now_ms()
    market = order.market
    sign = 1 if order.side == "buy" else -1
    for price, size in executions:
        fee: Charge = charge(fees, account.balances, market, order.side, price, size)
        trade = Trade(
            next(_trade_ids),
            order.order_id,
            market.symbol,
            order.side,
            price,
            size,
            fee.amount,
            stamp,
            fee.asset,
        )
        order.trades.append(trade)
        account.balances[market.base] = account.free(market.base) + sign * size
        account.balances[market.quote] = account.free(market.quote) - sign * trade.cost
        account.balances[fee.asset] = account.free(fee.asset) - fee.amount


def capped(amount: Decimal, fraction: Decimal | None, step: Decimal) -> Decimal:
    """`amount`, or the injected fraction of it rounded down to the market's step."""
    if fraction is None:
        return amount
    return (amount * fraction / step).to_integral_value(ROUND_DOWN) * step


def place(
    account: Account,
    market: Market,
    book: Book,
    *,
    side: str,
    price: Decimal,
    amount: Decimal,
    client_order_id: str,
    time_in_force: str,
    fees: Fees,
    fault: OrderFault,
) -> Order:
    """Place a limit order and match it at once. Raises Refused for a client order id an open
    order carries, missing funds, fees in an asset the emulator has no price for, or an injected
    rejection."""
    if account.holds_open(client_order_id):
        raise Refused(Refusal.DUPLICATE)
    if fault.reject is not None:
        refusal = Refusal.INSUFFICIENT if fault.reject == Refusal.INSUFFICIENT.value else Refusal.REJECTED
        raise Refused(refusal, fault.reject)
    unpriced = missing_price(fees, market)
    if unpriced is not None:
        raise Refused(Refusal.REJECTED, f"no {unpriced} price to charge fees in {fees.asset}")
    check_funds(account, market, side, price, amount)
    order = Order(
        next(_order_ids), client_order_id, market, side, price, amount, time_in_force, now_ms(), fees.asset
    )
    account.orders.append(order)
    if fault.fill_after_cancel:
        return order
    bids, asks = book
    wanted = capped(amount, fault.fill_fraction, market.step)
    settle(account, order, take(reachable(side, price, bids, asks), wanted), fees)
    if order.filled >= order.amount:
        close(order, OrderState.FILLED)
    elif time_in_force != "GTC":
        close(order, OrderState.EXPIRED)
    return order


def close(order: Order, state: OrderState) -> None:
    order.state = state
    order.closed_ms = now_ms()


def fill_rest(account: Account, order: Order, book: Book, fees: Fees) -> None:
    """Match what is left of `order` against `book`."""
    bids, asks = book
    left = order.amount - order.filled
    settle(account, order, take(reachable(order.side, order.price, bids, asks), left), fees)


def cancel(
    account: Account,
    order: Order,
    book: Book,
    *,
    fees: Fees,
    fault: OrderFault,
    relabel: str | None = None,
) -> Order:
    """Cancel an open order; a cancelled order takes the client id `relabel` when one is given.
    Raises Refused(UNKNOWN_ORDER) for a closed one, as venues do, and Refused(CANCEL_PENDING)
    for one whose cancel is still pending. Under the pending-cancel fault the order stays open
    until the cancel lands (see `read`); under fill-after-cancel alone it fills against the book
    first, and the cancel then finds it closed."""
    if order.state is not OrderState.OPEN:
        raise Refused(Refusal.UNKNOWN_ORDER)
    if order.pending_cancel is not None:
        raise Refused(Refusal.CANCEL_PENDING)
    if fault.delays_cancels:
        due_ns = time.monotonic_ns() + int(fault.cancel_pending_s * 1e9)
        order.pending_cancel = PendingCancel(
            due_ns, fault.cancel_pending_reads, relabel, fault.fill_after_cancel
        )
        return order
    if fault.fill_after_cancel:
        fill_rest(account, order, book, fees)
        close(order, OrderState.FILLED if order.filled >= order.amount else OrderState.EXPIRED)
        raise Refused(Refusal.UNKNOWN_ORDER)
    _cancelled(order, relabel)
    return order


def land_cancel(account: Account, order: Order, book: Book, fees: Fees) -> None:
    """Carry out `order`'s pending cancel: filled if it matched meanwhile, else cancelled."""
    pending = order.pending_cancel
    if pending is None:
        return
    order.pending_cancel = None
    if pending.fill:
        fill_rest(account, order, book, fees)
    if order.filled >= order.amount:
        close(order, OrderState.FILLED)
    else:
        _cancelled(order, pending.relabel)


def _cancelled(order: Order, relabel: str | None) -> None:
    close(order, OrderState.CANCELED)
    if relabel is not None:
        order.client_order_id = relabel


@dataclass(frozen=True)
class OrderTerms:
    """A new limit order as a dialect read it from the request; `fee_asset` is the order's own
    choice of how to pay fees (None: the account's)."""

    side: str
    price: Decimal
    amount: Decimal
    time_in_force: str
    client_order_id: str
    fee_asset: str | None = None


def fees_on(venue: EmulatedVenue, asset: str) -> Fees:
    """The venue's taker rate and fee-asset prices, for fees paid as `asset` says."""
    return Fees(venue.taker_fee, asset, venue.fee_prices)


def place_on(venue: EmulatedVenue, account: Account, market: Market, terms: OrderTerms) -> Order:
    """place() against the venue's current book, fees and injected order fault."""
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
        fees=fees_on(venue, terms.fee_asset or account.fee_asset),
        fault=venue.fault.orders,
    )


def cancel_on(venue: EmulatedVenue, account: Account, order: Order, relabel: str | None = None) -> Order:
    """cancel() against the venue's current book, fees and injected order fault."""
    book = venue.book(order.market.symbol)
    fees = fees_on(venue, order.fee_asset)
    return cancel(
        account, order, (book.bids, book.asks), fees=fees, fault=venue.fault.orders, relabel=relabel
    )


def read(venue: EmulatedVenue, account: Account, orders: Iterable[Order]) -> None:
    """Count a lookup of each of `orders` (a query or a list that considers them): a pending
    cancel that is due lands now, so this lookup shows the outcome; any other still reads open."""
    now_ns = time.monotonic_ns()
    for order in orders:
        pending = order.pending_cancel
        if pending is None:
            continue
        if pending.due(now_ns):
            _land_on(venue, account, order)
        else:
            pending.reads = max(0, pending.reads - 1)


def land_due_cancels(venue: EmulatedVenue, account: Account) -> None:
    """Land every pending cancel whose time is up and that waits for no more lookups, so that any
    request (balances too) sees what the venue has done by now."""
    now_ns = time.monotonic_ns()
    for order in account.orders:
        if order.pending_cancel is not None and order.pending_cancel.due(now_ns):
            _land_on(venue, account, order)


def _land_on(venue: EmulatedVenue, account: Account, order: Order) -> None:
    book = venue.book(order.market.symbol)
    land_cancel(account, order, (book.bids, book.asks), fees_on(venue, order.fee_asset))
