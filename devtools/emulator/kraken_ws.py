"""The Kraken websocket v2 dialect: the `book` channel, as ccxt.pro's kraken consumes it.

https://docs.kraken.com/api/docs/websocket-v2/book: a client connects to `/v2`, is greeted with a
status message, sends {"method": "subscribe", "params": {"channel": "book", "symbol":
["BTC/USDT"], "depth": 10}, "req_id": 1} and gets an acknowledgement per symbol, then a snapshot
of the book to that depth and an update for each change within it: the levels that changed, a
quantity of zero removing one, and the levels that come into view when one leaves (the client
truncates its book to the depth). Prices and quantities are JSON numbers written to the pair's
precision (the tick's and the lot step's decimals, as AssetPairs states them, more where a book
was set finer), and every snapshot and update carries the CRC32 `checksum` of the top ten levels
as Kraken's book checksum guide computes it from that text. Pings are answered with pongs.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from devtools.emulator.kraken import decimals
from devtools.emulator.streams import Answer, Subscription, changed_levels
from devtools.emulator.venue import Book, EmulatedVenue, Level, Market

DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_DEPTH = 10
CHECKSUM_LEVELS = 10


def serves(path: str) -> bool:
    return path == "/v2"


def greeting() -> tuple[str, ...]:
    status = {"api_version": "v2", "connection_id": 1, "system": "online", "version": "2.0.10"}
    return (_dumps({"channel": "status", "type": "update", "data": [status]}),)


def _dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def _now() -> str:
    """The time as Kraken writes it: RFC 3339 in UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _reply(request: dict[str, Any], **fields: Any) -> str:
    stamp = _now()
    method = {"method": request.get("method"), "req_id": request.get("req_id")}
    return _dumps({**method, **fields, "time_in": stamp, "time_out": stamp})


def answer(venue: EmulatedVenue, text: str) -> Answer:
    """Pings, and subscriptions to the book channel (others are refused)."""
    try:
        request = json.loads(text)
        method = request["method"]
    except (ValueError, TypeError, KeyError):
        return Answer(replies=(_dumps({"error": "Malformed request", "success": False}),))
    if method == "ping":
        return Answer(urgent=(_pong(request),))
    params = request.get("params") if isinstance(request.get("params"), dict) else {}
    if method not in ("subscribe", "unsubscribe") or params.get("channel") != "book":
        return Answer(replies=(_reply(request, error="Unsupported request", success=False),))
    depth, symbols = params.get("depth", DEFAULT_DEPTH), params.get("symbol")
    if depth not in DEPTHS or not isinstance(symbols, list):
        return Answer(replies=(_reply(request, error="Invalid depth or symbol list", success=False),))
    return _book_request(venue, request, [str(symbol) for symbol in symbols], depth)


def _pong(request: dict[str, Any]) -> str:
    return _reply({**request, "method": "pong"})


def _book_request(venue: EmulatedVenue, request: dict[str, Any], symbols: list[str], depth: int) -> Answer:
    """One answer per symbol: acknowledged for a listed pair, refused for any other."""
    known = [symbol for symbol in symbols if symbol in venue.markets]
    replies = [_acknowledgement(request, symbol, depth) for symbol in known]
    replies += [
        _reply(request, error="Currency pair not supported", success=False, symbol=symbol)
        for symbol in symbols
        if symbol not in venue.markets
    ]
    if request["method"] == "unsubscribe":
        return Answer(replies=tuple(replies), unsubscribe=tuple(known))
    return Answer(replies=tuple(replies), subscribe=tuple(Subscription(symbol, depth) for symbol in known))


def _acknowledgement(request: dict[str, Any], symbol: str, depth: int) -> str:
    result = {"channel": "book", "depth": depth, "snapshot": True, "symbol": symbol}
    return _reply(request, result=result, success=True)


def snapshot(market: Market, subscription: Subscription, book: Book, damaged: bool) -> str:
    places = _places(market)
    bids, asks = _view(book, subscription)
    body = _book_body(market, places, bids, asks, _checksum(places, bids, asks, damaged))
    return f'{{"channel":"book","type":"snapshot","data":[{{{body}}}]}}'


def update(
    market: Market, subscription: Subscription, old: Book | None, new: Book, damaged: bool
) -> str | None:
    """The update of one change as the subscription sees it; None when nothing within its depth
    changed."""
    bids, asks = _view(new, subscription)
    before_bids, before_asks = _view(old, subscription) if old is not None else ((), ())
    changed_bids, changed_asks = changed_levels(before_bids, bids), changed_levels(before_asks, asks)
    if not changed_bids and not changed_asks:
        return None
    places = _places(market)
    body = _book_body(market, places, changed_bids, changed_asks, _checksum(places, bids, asks, damaged))
    return f'{{"channel":"book","type":"update","data":[{{{body},"timestamp":"{_now()}"}}]}}'


def _view(book: Book, subscription: Subscription) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    depth = subscription.depth or DEFAULT_DEPTH
    return book.bids[:depth], book.asks[:depth]


def _places(market: Market) -> tuple[int, int]:
    """The pair's precision: decimals of its prices and of its quantities."""
    return decimals(market.tick), decimals(market.step)


def _book_body(
    market: Market, places: tuple[int, int], bids: Sequence[Level], asks: Sequence[Level], checksum: int
) -> str:
    sides = f'"bids":[{_levels(places, bids)}],"asks":[{_levels(places, asks)}]'
    return f'"symbol":{json.dumps(market.symbol)},{sides},"checksum":{checksum}'


def _levels(places: tuple[int, int], levels: Sequence[Level]) -> str:
    return ",".join(f'{{"price":{price},"qty":{qty}}}' for price, qty in _texts(places, levels))


def _texts(places: tuple[int, int], levels: Sequence[Level]) -> list[tuple[str, str]]:
    price_places, qty_places = places
    return [(_fixed(price, price_places), _fixed(qty, qty_places)) for price, qty in levels]


@functools.lru_cache(maxsize=1 << 16)  # books repeat their prices and amounts from frame to frame
def _fixed(value: Decimal, places: int) -> str:
    """`value` with at least `places` decimals, and all of its own."""
    own = max(0, -int(value.as_tuple().exponent))
    return f"{value:.{max(own, places)}f}"


def _checksum(places: tuple[int, int], bids: Sequence[Level], asks: Sequence[Level], damaged: bool) -> int:
    value = checksum(_texts(places, asks[:CHECKSUM_LEVELS]), _texts(places, bids[:CHECKSUM_LEVELS]))
    return (value + 1) % 2**32 if damaged else value


def checksum(asks: Sequence[tuple[str, str]], bids: Sequence[tuple[str, str]]) -> int:
    """Kraken's book checksum of the top asks (best first, as written) then the top bids: CRC32 of
    each level's price and quantity text without the decimal point and leading zeros."""
    digits = "".join(_digits(price) + _digits(qty) for price, qty in [*asks, *bids])
    return zlib.crc32(digits.encode())


@functools.lru_cache(maxsize=1 << 16)
def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")
