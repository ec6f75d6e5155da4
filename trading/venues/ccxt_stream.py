"""Streamed order books through ccxt.pro's websocket clients, which keep each book whole: a snapshot
and the venue's diffs after it, checked by update ids (Binance) or checksums (Kraken).

ccxt's errors stop here: each one is translated into a StreamFault naming what broke the stream
(trading.core.streams.StreamEvent). A stream is never repaired in place: its owner closes it and
opens a new one, which starts from a fresh snapshot with nothing of the old book kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import ccxt.pro as ccxtpro
from django.conf import settings

from trading.clock import now_ms
from trading.core.streams import StreamEvent
from trading.core.types import Quote
from trading.core.validate import QuoteRejected, parse_quote
from trading.venues.base import StreamFault, VenueError
from trading.venues.ccxt_gateway import book_payload, load_markets, open_exchange

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


class FrameCheck(Protocol):
    """Checks a venue's frames as they come, on their text: (symbol, why) for each book a frame
    shows broken."""

    def check(self, text: str) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class StreamDialect:
    """How one exchange's ccxt.pro client streams books: the depth it keeps (Binance: its REST
    snapshot's; Kraken: its subscription's, which its checksum covers), what its ChecksumError
    (or a broken book our own `checker` finds) means, and options over ccxt's own."""

    depth: int | None = None
    integrity: StreamEvent = StreamEvent.CHECKSUM
    options: dict[str, Any] = field(default_factory=dict)
    checker: Callable[[], FrameCheck] | None = None


def kraken_checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken's book checksum of the top asks (best first, as written) then the top bids: CRC32 of
    each level's price and quantity text without the decimal point and leading zeros."""
    digits = "".join(_digits(price) + _digits(qty) for price, qty in [*asks, *bids])
    return zlib.crc32(digits.encode())


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


class KrakenBooks:
    """Kraken's v2 books as its frames write them (price and quantity texts), kept to check each
    frame's checksum the way Kraken's guide says: over the top ten levels as written. (ccxt.pro
    4.5.90's own check fails on the numbers it has parsed: it stays off; and a parsed number no
    longer says how it was written.)"""

    LEVELS = 10

    def __init__(self) -> None:
        self.books: dict[str, dict[str, dict[str, str]]] = {}  # symbol -> side -> price -> qty

    def check(self, text: str) -> list[tuple[str, str]]:
        if '"book"' not in text:
            return []
        try:
            message = json.loads(text, parse_float=str, parse_int=str)
        except ValueError:
            return []
        if not isinstance(message, dict) or message.get("channel") != "book":
            return []
        fresh = message.get("type") == "snapshot"
        return [broken for data in message.get("data") or [] if (broken := self._apply(data, fresh))]

    def _apply(self, data: dict[str, Any], fresh: bool) -> tuple[str, str] | None:
        symbol = str(data.get("symbol"))
        if fresh:
            self.books[symbol] = {"bids": {}, "asks": {}}
        book = self.books.setdefault(symbol, {"bids": {}, "asks": {}})
        for side, kept in book.items():
            for level in data.get(side) or []:
                price, qty = str(level["price"]), str(level["qty"])
                if Decimal(qty):
                    kept[price] = qty
                else:
                    kept.pop(price, None)
        sent = data.get("checksum")
        kept_sum = kraken_checksum(self._top(book["asks"], False), self._top(book["bids"], True))
        if sent is None or int(sent) == kept_sum:
            return None
        return symbol, f"checksum {sent} sent, {kept_sum} of the book kept"

    def _top(self, side: dict[str, str], descending: bool) -> list[tuple[str, str]]:
        return sorted(side.items(), key=lambda level: Decimal(level[0]), reverse=descending)[: self.LEVELS]


# Binance checks its update ids (ccxt's default, ChecksumError for a gap); Kraken's checksums are
# checked here, frame by frame.
STREAM_DIALECTS: dict[str, StreamDialect] = {
    "binance": StreamDialect(
        depth=100, integrity=StreamEvent.GAP, options={"watchOrderBook": {"checksum": True}}
    ),
    "kraken": StreamDialect(depth=10, integrity=StreamEvent.CHECKSUM, checker=KrakenBooks),
}


def fault_kind(exc: Exception, dialect: StreamDialect) -> StreamEvent:
    """What a ccxt error ending a watch says of the stream (ChecksumError is an InvalidNonce, which
    is a NetworkError: most specific first)."""
    if isinstance(exc, ccxtpro.ChecksumError):
        return dialect.integrity
    if isinstance(exc, ccxtpro.InvalidNonce):
        return StreamEvent.GAP
    if isinstance(exc, ccxtpro.RequestTimeout):
        return StreamEvent.STALL
    if isinstance(exc, ccxtpro.NetworkError):
        return StreamEvent.DISCONNECT
    return StreamEvent.ERROR


def rejection_kind(rejected: QuoteRejected) -> StreamEvent:
    return StreamEvent.CROSSED if rejected.reason == "crossed" else StreamEvent.INVALID


class CcxtStream:
    """One session of a venue's streamed books through ccxt.pro: REST (markets, and Binance's
    snapshots) under `api_url` and websockets under `stream_url`, each when given. Closed by its
    owner, once, whatever happened."""

    def __init__(
        self,
        name: str,
        ccxt_id: str,
        *,
        api_url: str = "",
        stream_url: str = "",
        depth: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.name = name
        self.depth = depth
        self._clock = clock
        self._dialect = STREAM_DIALECTS.get(ccxt_id, StreamDialect())
        self._markets_key = (ccxt_id, api_url)
        self._exchange = open_exchange(
            ccxt_id,
            api_url,
            settings.COLLECT_TIMEOUT_MS,
            stream_url=stream_url,
            library=ccxtpro,
            options=self._dialect.options,
        )
        self.broken: dict[str, str] = {}  # symbols whose kept book failed the dialect's check
        self._on_frame(self._exchange)
        self.last_frame_ms = clock()  # a session that never hears from its venue stalls too

    def _on_frame(self, exchange: Any) -> None:
        """Note the time of every frame the venue sends (a book's diff, a heartbeat, a pong),
        before ccxt handles it: silence is measured on frames, not on books that changed."""
        handle = exchange.handle_message

        def stamped(client: Any, message: Any) -> Any:
            self.last_frame_ms = self._clock()
            return handle(client, message)

        exchange.handle_message = stamped
        if self._dialect.checker is not None:
            self._check_frames(exchange, self._dialect.checker())

    def _check_frames(self, exchange: Any, checker: FrameCheck) -> None:
        """Check each frame's text, where the dialect can, before ccxt reads it: a book found
        broken is never handed out (ccxt resolves its watch as it reads the frame, but the
        watcher runs only later, and finds it in `broken`)."""
        open_client = exchange.client

        def client(url: str) -> Any:
            opened = open_client(url)
            if not getattr(opened, "frames_checked", False):
                read = opened.handle_text_or_binary_message

                def checked(data: Any) -> Any:
                    if isinstance(data, str):
                        self.broken.update(checker.check(data))
                    return read(data)

                opened.handle_text_or_binary_message, opened.frames_checked = checked, True
            return opened

        exchange.client = client

    async def listed(self, symbols: list[str]) -> list[str]:
        """Those of `symbols` the venue lists (loading its markets once). Raises StreamFault."""
        try:
            await load_markets(self._exchange, self._markets_key, self.name)
        except ccxtpro.BaseError as exc:
            raise self._fault(exc) from None
        return [symbol for symbol in symbols if symbol in self._exchange.markets]

    async def next_book(self, symbol: str) -> Quote:
        """The venue's `symbol` book as soon as it changes (the first: once its snapshot is in),
        its top `depth` levels, stamped with the venue's time and ours, numbered later. Raises
        StreamFault when the stream broke or the book it keeps cannot be used."""
        try:
            book = await self._exchange.watch_order_book(symbol, self._dialect.depth)
        except ccxtpro.BaseError as exc:
            raise self._fault(exc) from None
        if symbol in self.broken:
            raise StreamFault(self._dialect.integrity, f"{self.name} {symbol}: {self.broken[symbol]}")
        try:
            return parse_quote(book_payload(self.name, symbol, book, self.depth))
        except QuoteRejected as rejected:
            raise StreamFault(rejection_kind(rejected), f"{self.name} {symbol}: {rejected}") from None

    def _fault(self, exc: Exception) -> StreamFault:
        return StreamFault(fault_kind(exc, self._dialect), f"{self.name}: {type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        """Close every connection of the session, within CLOSE_TIMEOUT_S: a venue that does not
        answer the websocket's closing handshake (one that stalled, say) has its connections
        dropped instead. Never raises for the venue's sake."""
        try:
            await asyncio.wait_for(self._exchange.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.info("%s: the venue did not answer the close: connections dropped", self.name)
            await self._drop()
        except (ccxtpro.BaseError, OSError, VenueError) as exc:
            log.info("%s: closing the stream: %s", self.name, exc)

    async def _drop(self) -> None:
        """Close the client's HTTP session, and with it every connection of its pool, websockets
        included."""
        session, self._exchange.session = self._exchange.session, None
        if session is not None:
            await session.close()
        await self._exchange.close_connector()
