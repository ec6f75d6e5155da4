"""The state of each emulated venue: its markets, books, candles, accounts, fee settings, fault
and request counts, and when each order arrived. The HTTP server (`server`) routes requests to a
venue's dialect, which reads and changes this state; orders and balances change in `matching`.

Every book a venue shows, over REST or a stream, is one it served: each change of a symbol's
book (set, moved by a feed, or passing through in a burst) becomes the served book under a higher
version and is told to the venue's change listener (the streams), in order, so a snapshot and a
stream of changes always agree.

This module uses only the standard library, so it runs in a test process or a command alike.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from devtools.emulator.fees import FeePrice
from devtools.emulator.matching import DEFAULT_TAKER_FEE, Account, OrderFault

# A book level as the emulator keeps it: exact decimals, served verbatim (even when nonsensical,
# so tests can serve crossed or non-positive books).
Level = tuple[Decimal, Decimal]
# A one-minute bar as the emulator keeps it: (open time in epoch ms, open, high, low, close, volume).
Candle = tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]
DEFAULT_LEVELS = 5


@dataclass(frozen=True)
class Market:
    """One listed market: its trading rules and the mid price of its default book."""

    symbol: str  # unified, e.g. "BTC/USDT"
    tick: Decimal
    step: Decimal
    min_amount: Decimal
    min_cost: Decimal
    mid: Decimal

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]


DEFAULT_MARKETS = (
    Market(
        symbol="BTC/USDT",
        tick=Decimal("0.01"),
        step=Decimal("0.00001"),
        min_amount=Decimal("0.00001"),
        min_cost=Decimal("5"),
        mid=Decimal("60000"),
    ),
    Market(
        symbol="ETH/USDT",
        tick=Decimal("0.01"),
        step=Decimal("0.0001"),
        min_amount=Decimal("0.0001"),
        min_cost=Decimal("5"),
        mid=Decimal("3000"),
    ),
)


@dataclass(frozen=True)
class Book:
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    version: int  # grows with every change of the symbol's book, like a venue's update id

    def same_levels(self, other: Book) -> bool:
        return self.bids == other.bids and self.asks == other.asks


# Where a venue's books come from when none was set: the symbol's book at the moment of asking.
BookFeed = Callable[[str], Book]
# Told of every change of a served book, holding the venue's lock so changes arrive in order:
# (symbol, the book served before, None for the first, the book served now).
ChangeListener = Callable[[str, Book | None, Book], None]


@dataclass(frozen=True)
class Fault:
    """An injected failure: wait `delay_s` before answering, then answer `status` if it is set;
    `orders` is the trouble orders meet (rejection, partial fill, fill after cancel, pending
    cancels); `ignore_client_id_filter` makes lookups by client order id answer as if no id had
    been given."""

    status: int | None = None
    delay_s: float = 0.0
    orders: OrderFault = field(default_factory=OrderFault)
    ignore_client_id_filter: bool = False


@dataclass(frozen=True)
class Arrival:
    """When a new-order request reached the server: the wall clock (time.time_ns) to compare with
    other processes' timestamps, and the monotonic clock (time.monotonic_ns, shared by the
    processes of one machine) to measure intervals with."""

    wall_ns: int
    monotonic_ns: int


# Told of each new-order request as it arrives: (venue, client order id, arrival).
ArrivalListener = Callable[[str, str, Arrival], None]


class EmulatedVenue:
    """One venue's markets, books, accounts, fault and request counts. Safe to use from any
    thread; private handlers run holding `ledger`, so orders and balances change one at a time."""

    def __init__(self, name: str, markets: Sequence[Market]) -> None:
        self.name = name
        self.markets: dict[str, Market] = {market.symbol: market for market in markets}
        self._books: dict[str, Book] = {}  # set by a test: they win over the feed
        self._served: dict[str, Book] = {}  # what was last served, with its version
        self._on_change: ChangeListener | None = None
        self._candles: dict[str, tuple[Candle, ...]] = {}
        self._fault = Fault()
        self._requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.ledger = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.taker_fee = DEFAULT_TAKER_FEE
        self.fee_prices: dict[str, FeePrice] = {}  # under `ledger`, keyed by pair ("BNB/USDT")
        self._feed: BookFeed | None = None
        self._arrivals: dict[str, Arrival] = {}

    def book(self, symbol: str) -> Book:
        """The book a test set, else the feed's book of the moment, else a sane default around the
        market's mid price: served (with a new version if it changed) and returned."""
        with self._lock:
            return self._serve(symbol, self._wanted(symbol))

    def _wanted(self, symbol: str) -> Book:
        book = self._books.get(symbol)
        if book is not None:
            return book
        return self._feed(symbol) if self._feed is not None else default_book(self.markets[symbol])

    def _serve(self, symbol: str, book: Book) -> Book:
        """Serve `book` unless its levels are those served already. Its version is kept when it
        is above the last one served (a feed's own clock), else made the next one. Holds _lock."""
        served = self._served.get(symbol)
        if served is not None and (served is book or served.same_levels(book)):
            return served
        floor = 0 if served is None else served.version + 1
        if book.version < floor:
            book = Book(book.bids, book.asks, floor)
        self._served[symbol] = book
        if self._on_change is not None:
            self._on_change(symbol, served, book)
        return book

    def feed_books(self, feed: BookFeed | None) -> None:
        """Serve `feed(symbol)`, asked afresh at every request, where no book was set."""
        with self._lock:
            self._feed = feed

    def set_book(self, symbol: str, bids: Sequence[Level], asks: Sequence[Level]) -> Book:
        """Serve these levels from now on; returns the served book."""
        with self._lock:
            served = self._serve(symbol, Book(tuple(bids), tuple(asks), version=0))
            self._books[symbol] = served
            return served

    def pass_book(self, symbol: str, bids: Sequence[Level], asks: Sequence[Level]) -> Book:
        """Serve these levels until the next look at the book, which serves the set, fed or
        default book again (a change passing through, as in a burst); returns the served book."""
        with self._lock:
            return self._serve(symbol, Book(tuple(bids), tuple(asks), version=0))

    def skip_versions(self, count: int) -> None:
        """Advance every served book's version by `count` without telling the listener: the next
        change of each book tells of versions its listener never saw, as lost updates would."""
        with self._lock:
            for symbol, book in self._served.items():
                self._served[symbol] = replace(book, version=book.version + count)

    def on_change(self, listener: ChangeListener | None) -> None:
        """Tell `listener` (None: nobody) of every change of a served book from now on."""
        with self._lock:
            self._on_change = listener

    def candles(self, symbol: str) -> tuple[Candle, ...]:
        """The one-minute bars a test set, oldest first; none by default."""
        with self._lock:
            return self._candles.get(symbol, ())

    def set_candles(self, symbol: str, candles: Sequence[Candle]) -> None:
        with self._lock:
            self._candles[symbol] = tuple(sorted(candles))

    def reset(self) -> None:
        """Back to default books (served at once, under new versions), no candles, no accounts, the
        default fee, no fee prices, no recorded arrivals and no fault."""
        with self._lock:
            self._books.clear()
            self._candles.clear()
            self._fault = Fault()
            self._feed = None
            self._arrivals.clear()
            for symbol in list(self._served):
                self._serve(symbol, self._wanted(symbol))
        with self.ledger:
            self.accounts.clear()
            self.taker_fee = DEFAULT_TAKER_FEE
            self.fee_prices.clear()

    @property
    def fault(self) -> Fault:
        with self._lock:
            return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault

    def count_request(self, path: str) -> None:
        with self._lock:
            self._requests[path] += 1

    def request_count(self, path: str | None = None) -> int:
        with self._lock:
            return self._requests[path] if path is not None else sum(self._requests.values())

    def record_arrival(self, client_order_id: str, arrival: Arrival) -> None:
        """Remember when the order under this client id arrived (the latest, for a reused id)."""
        with self._lock:
            self._arrivals[client_order_id] = arrival

    def arrivals(self) -> dict[str, Arrival]:
        with self._lock:
            return dict(self._arrivals)


def default_book(market: Market, levels: int = DEFAULT_LEVELS) -> Book:
    """Ten ticks between levels, amounts growing with depth: a plain, uncrossed book."""
    gap = market.tick * 10
    bids = tuple((market.mid - gap * i, Decimal(i) / 2) for i in range(1, levels + 1))
    asks = tuple((market.mid + gap * i, Decimal(i) / 2) for i in range(1, levels + 1))
    return Book(bids, asks, version=0)
