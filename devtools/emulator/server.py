"""The emulator's Python API and its routing of REST requests to each venue's dialect; the HTTP
server and the dialects' shape are in `rest`, each venue's state lives in `venue`.

Venues with a stream dialect also stream their books over websockets (`streams`), from a server
of their own on another port that starts and stops with the HTTP one.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from devtools.emulator.fees import QUOTE, FeePrice, valid_asset
from devtools.emulator.matching import Account, Order, OrderFault, land_due_cancels
from devtools.emulator.rest import Dialect, PrivateHandler, Reply, Request, RestServer
from devtools.emulator.streams import SentFrame, StreamDialect, StreamFault, StreamServer
from devtools.emulator.venue import (
    DEFAULT_MARKETS,
    Arrival,
    ArrivalListener,
    Book,
    BookFeed,
    Candle,
    EmulatedVenue,
    Fault,
    Level,
    Market,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Hosted:
    venue: EmulatedVenue
    dialect: Dialect


class Emulator:
    """A local exchange: `venues` maps each venue's name (its path prefix) to its dialect, and
    `streams` the names of those that stream their books to their stream dialect.

    Use as a context manager, or call start() and stop(). `port` (REST) and `stream_port`
    (websockets) 0 pick free ports.
    """

    def __init__(
        self,
        venues: Mapping[str, Dialect],
        *,
        streams: Mapping[str, StreamDialect] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        stream_port: int = 0,
        markets: Sequence[Market] = DEFAULT_MARKETS,
    ) -> None:
        self.host = host
        self.port = port
        self._hosted = {
            name: _Hosted(EmulatedVenue(name, markets), dialect) for name, dialect in venues.items()
        }
        streamed = {name: (self._venue(name), dialect) for name, dialect in (streams or {}).items()}
        self._streams = StreamServer(streamed, host, stream_port)
        self._httpd: RestServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._arrival_listener: ArrivalListener | None = None

    def start(self) -> Self:
        self._stopping.clear()
        self._httpd = RestServer((self.host, self.port), self.handle)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        if self._streams.venues:
            self._streams.start()
        log.info("exchange emulator serving %s on %s", ", ".join(self._hosted), self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving; handlers sleeping out a delay wake up and answer nothing, and every stream
        connection is cut."""
        self._stopping.set()
        self._streams.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, venue: str) -> str:
        """The venue's API root, to put in Venue.api_url."""
        self._venue(venue)
        return f"{self.base_url}/{venue}"

    @property
    def stream_port(self) -> int:
        return self._streams.port

    def stream_url_for(self, venue: str) -> str:
        """The venue's websocket root, `ws://HOST:STREAM_PORT/<venue>`: below it each stream has the
        path of the venue's own websocket URL (Binance `/ws`, Kraken `/v2`), so a ccxt.pro client
        reaches it with its `urls["api"]["ws"]` moved under this root."""
        return self._streams.url_for(venue)

    def set_book(
        self, venue: str, symbol: str, bids: Sequence[Sequence[Any]], asks: Sequence[Sequence[Any]]
    ) -> None:
        """Serve this book from now on. Levels are (price, amount) as str, int or Decimal, served as
        given, in the given order: a crossed or negative book reaches the client unchanged."""
        self._venue(venue).set_book(symbol, _levels(bids), _levels(asks))

    def book(self, venue: str, symbol: str) -> Book:
        """The book `venue` serves for `symbol` now, as orders match against it."""
        return self._venue(venue).book(symbol)

    def feed_books(self, venue: str, feed: BookFeed | None) -> None:
        """Serve `feed(symbol)`, asked at every request, for each symbol without a set book
        (None: back to the default books)."""
        self._venue(venue).feed_books(feed)

    def set_candles(self, venue: str, symbol: str, candles: Sequence[Sequence[Any]]) -> None:
        """Serve these one-minute bars, each (open time in epoch ms, open, high, low, close, volume)
        with prices as str, int or Decimal, from the venue's OHLCV endpoint from now on."""
        self._venue(venue).set_candles(symbol, [_candle(candle) for candle in candles])

    def set_fault(
        self,
        venue: str,
        *,
        status: int | None = None,
        delay_s: float = 0.0,
        reject: str | None = None,
        fill_fraction: Decimal | str | None = None,
        fill_after_cancel: bool = False,
        cancel_pending_s: float = 0.0,
        cancel_pending_reads: int = 0,
        ignore_client_id_filter: bool = False,
    ) -> None:
        """Replace `venue`'s fault with this one.

        Every request waits `delay_s` (longer than the client's timeout makes it time out), then
        is answered with HTTP `status` (429, 500, 503, ...) in the venue's own words. New orders
        are refused with the reason `reject` ("insufficient balance" for the venue's own
        missing-funds refusal), fill at most `fill_fraction` of each, or (`fill_after_cancel`)
        stay open and fill when a cancel arrives.

        A cancel is acknowledged but left pending with `cancel_pending_s` or
        `cancel_pending_reads`: for that long after it, and for that many lookups of the order
        (queries, open and closed order lists), the order still reads as open (Binance:
        NEW/PARTIALLY_FILLED; Kraken: "open", and its cancel answers `pending`); the lookup after
        that reads it canceled, or filled if it matched meanwhile (with `fill_after_cancel`).
        A second cancel meanwhile is refused (Kraken: "EOrder:Cancel pending").

        `ignore_client_id_filter`: lookups by client order id ignore the id, as a venue that
        drops a filter does. Kraken's OpenOrders/ClosedOrders with `cl_ord_id` list every open
        (closed) order of the account, newest first; Binance's order query by
        `origClientOrderId` answers the account's newest order on the symbol."""
        fraction = Decimal(str(fill_fraction)) if fill_fraction is not None else None
        orders = OrderFault(reject, fraction, fill_after_cancel, cancel_pending_s, cancel_pending_reads)
        self._venue(venue).fault = Fault(status, delay_s, orders, ignore_client_id_filter)

    def clear_fault(self, venue: str) -> None:
        self._venue(venue).fault = Fault()

    def set_stream_fault(
        self,
        venue: str,
        *,
        drop: bool = False,
        skip_ids: int = 0,
        bad_checksum: bool = False,
        stall_s: float = 0.0,
        burst: int = 0,
    ) -> None:
        """Trouble on `venue`'s streams, each once, in this order:

        `skip_ids` update ids pass unsent: the next frame of each served book tells of ids its
        clients never saw (Binance: U jumps past the last u + 1). `bad_checksum`: the next book
        frame's checksum is wrong (Kraken; Binance frames carry none). `stall_s`: no frame goes
        out for that long; frames wait and then go in order, connections stay open and pings are
        still answered. `burst`: that many changes of every subscribed book back to back (the
        best bid's amount stepping up), then one back to the book as it was. `drop`: every stream
        connection of the venue is cut, with no closing handshake; clients may connect again.
        Returns once the fault is in place (a dropped connection is cut; a stall has begun)."""
        self._streams.inject(venue, StreamFault(drop, skip_ids, bad_checksum, stall_s, burst))

    def clear_stream_fault(self, venue: str) -> None:
        """End `venue`'s stall and take back a bad checksum not yet sent."""
        self._streams.clear_fault(venue)

    def stream_updates(
        self,
        venue: str,
        symbol: str,
        books: Iterable[tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]],
        *,
        per_second: float | None = None,
    ) -> None:
        """Set the book to each of `books` ((bids, asks), levels as for set_book) in turn, from the
        streams' own thread: `per_second` a second, or as fast as they go (None). Each change is
        one frame to each subscriber. Returns once the last is set; its frames may still be on
        their way (see sent_frames)."""
        changes = [(_levels(bids), _levels(asks)) for bids, asks in books]
        self._streams.apply(venue, symbol, changes, per_second)

    def sent_frames(self, venue: str) -> list[SentFrame]:
        """`venue`'s book frames (snapshots and updates) as they went out, oldest first, one per
        connection that got each: the book's version and when it was written to the socket. The
        latest SENT_FRAMES_KEPT are kept."""
        return self._streams.sent_frames(venue)

    def stream_connections(self, venue: str) -> int:
        """How many stream connections `venue` has open."""
        return self._streams.connections(venue)

    def add_account(
        self, venue: str, key: str, secret: str, balances: Mapping[str, Any], *, fee_asset: str = QUOTE
    ) -> None:
        """Open (or replace) an account on `venue` that signs with `key`/`secret` and holds
        `balances` (asset -> amount as str, int or Decimal).

        `fee_asset` is how its orders pay fees (see devtools.emulator.fees):
        - "quote" (default): in the quote currency, buys and sells alike; Kraken's default.
        - "received": from what the order receives, the base on a buy and the quote on a sell;
          Binance spot.
        - "base": in the base currency; Kraken orders sent with `oflags=fcib`.
        - an asset code such as "BNB": Binance with "pay fees with BNB" on: valued at the price
          given to set_fee_price() and debited from that asset, or from the received asset at
          the full rate when the balance cannot cover it.
        A Kraken order's `oflags` (fcib/fciq) overrides the account's choice for that order.
        Raises ValueError for anything else."""
        if not valid_asset(fee_asset):
            raise ValueError(f"fee_asset {fee_asset!r} is not quote, received, base or an asset code")
        hosted = self._venue(venue)
        funds = {asset: Decimal(str(amount)) for asset, amount in balances.items()}
        with hosted.ledger:
            hosted.accounts[key] = Account(key, secret, funds, fee_asset)

    def set_fee_price(
        self, venue: str, symbol: str, price: Decimal | str, *, discount: Decimal | str = "0"
    ) -> None:
        """Value fees paid in `symbol`'s base (e.g. "BNB/USDT": BNB) at `price` of its quote
        from now on, reduced by `discount`, the share of the commission the venue waives when it
        is paid in that asset (Binance states 0.25 for BNB in its account commission answer)."""
        hosted = self._venue(venue)
        valued = FeePrice(Decimal(str(price)), Decimal(str(discount)))
        with hosted.ledger:
            hosted.fee_prices[symbol] = valued

    def balances(self, venue: str, key: str) -> dict[str, Decimal]:
        """The account's balances now."""
        hosted = self._venue(venue)
        with hosted.ledger:
            return dict(hosted.accounts[key].balances)

    def orders(self, venue: str, key: str) -> list[Order]:
        """The account's orders, oldest first, as they are now (copies)."""
        hosted = self._venue(venue)
        with hosted.ledger:
            return copy.deepcopy(hosted.accounts[key].orders)

    def set_taker_fee(self, venue: str, rate: Decimal | str) -> None:
        """Charge `rate` (a fraction of notional) on every fill from now on, in the asset each
        account pays fees in."""
        hosted = self._venue(venue)
        with hosted.ledger:
            hosted.taker_fee = Decimal(str(rate))

    def reset(self) -> None:
        """Every venue back to default books, no candles, no accounts, no fee prices, no recorded
        arrivals or frames and no fault (request counts keep counting; stream connections stay
        open and get the default books)."""
        for hosted in self._hosted.values():
            hosted.venue.reset()
        self._streams.clear()

    def request_count(self, venue: str, path: str | None = None) -> int:
        """Requests `venue` received (to `path`, e.g. "/api/v3/depth", when given)."""
        return self._venue(venue).request_count(path)

    def order_arrivals(self, venue: str) -> dict[str, Arrival]:
        """When each new-order request with a client order id reached `venue`, keyed by that id
        (the latest arrival for a reused id). Recorded as the request is routed, before any
        injected delay, signature check or matching, whatever the venue then answers."""
        return self._venue(venue).arrivals()

    def on_arrival(self, listener: ArrivalListener | None) -> None:
        """Tell `listener` (None: nobody) of every new-order arrival as it is recorded, in the
        thread that serves the request."""
        self._arrival_listener = listener

    def _venue(self, name: str) -> EmulatedVenue:
        try:
            return self._hosted[name].venue
        except KeyError:
            raise KeyError(f"the emulator hosts no venue {name!r}; it hosts {sorted(self._hosted)}") from None

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        raw_query: str = "",
    ) -> Reply | None:
        """Route one request; None when the emulator stopped while it waited out a delay."""
        prefix, _, rest = path.lstrip("/").partition("/")
        hosted = self._hosted.get(prefix)
        if hosted is None:
            return Reply(404, {"error": f"no venue {prefix!r} here"})
        request = Request(method, "/" + rest, query, headers, body, raw_query)
        self._note_arrival(hosted, request)
        hosted.venue.count_request(request.path)
        fault = hosted.venue.fault
        if fault.delay_s and self._stopping.wait(fault.delay_s):
            return None
        if fault.status is not None:
            return hosted.dialect.fault_reply(fault.status)
        private = hosted.dialect.PRIVATE_ROUTES.get((method, request.path))
        if private is not None:
            return _signed(hosted, private, request)
        handler = hosted.dialect.ROUTES.get((method, request.path))
        if handler is None:
            return Reply(404, {"error": f"{prefix} has no endpoint {method} {request.path}"})
        return handler(hosted.venue, request)

    def _note_arrival(self, hosted: _Hosted, request: Request) -> None:
        client_order_id = hosted.dialect.new_order_client_id(request)
        if client_order_id is None:
            return
        arrival = Arrival(time.time_ns(), time.monotonic_ns())
        hosted.venue.record_arrival(client_order_id, arrival)
        listener = self._arrival_listener
        if listener is not None:
            listener(hosted.venue.name, client_order_id, arrival)


def _signed(hosted: _Hosted, handler: PrivateHandler, request: Request) -> Reply:
    """Answer a private request for the account that signed it, or with the venue's refusal.
    Cancels left pending whose time is up land first, so every answer shows them done."""
    with hosted.venue.ledger:
        account = hosted.dialect.authenticate(hosted.venue, request)
        if isinstance(account, Reply):
            return account
        land_due_cancels(hosted.venue, account)
        return handler(hosted.venue, request, account)


def _candle(raw: Sequence[Any]) -> Candle:
    open_ms, *values = raw
    opening, high, low, close, volume = (Decimal(str(value)) for value in values)
    return (int(open_ms), opening, high, low, close, volume)


def _levels(raw: Sequence[Sequence[Any]]) -> tuple[Level, ...]:
    return tuple((Decimal(str(price)), Decimal(str(amount))) for price, amount in raw)
