"""The Binance spot websocket dialect: the diff-depth stream, as ccxt.pro's binance consumes it.

https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams: a client connects to
`/ws` (ccxt adds a stream index, `/ws/0`), sends {"method": "SUBSCRIBE", "params":
["btcusdt@depth@100ms"], "id": 1} and is answered {"result": null, "id": 1}. Then each change of
the book is a depthUpdate event, {"e": "depthUpdate", "E": event ms, "s": "BTCUSDT", "U": first
update id, "u": final update id, "b": [[price, amount]], "a": [...]}, an amount of zero removing
the level. There is no snapshot on the stream: the client reads /api/v3/depth, whose
`lastUpdateId` is the served book's version, and these events' ids are the versions too (U is the
version after the one before, u the book's own), so Binance's way of keeping a local book works:
drop events with u <= lastUpdateId, start at the one with U <= lastUpdateId + 1 <= u, then each
U is the u before plus one. Every change is an event of its own, where Binance gathers those of
100 ms (or 1000 ms) into one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from devtools.emulator.binance import market_id, number
from devtools.emulator.streams import Answer, Subscription, changed_levels
from devtools.emulator.venue import Book, EmulatedVenue, Level, Market

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE")


def serves(path: str) -> bool:
    return path == "/ws" or path.startswith("/ws/")


def greeting() -> tuple[str, ...]:
    return ()


def _dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def answer(venue: EmulatedVenue, text: str) -> Answer:
    """SUBSCRIBE and UNSUBSCRIBE of `<symbol>@depth[@100ms|@1000ms]` streams; streams of other
    kinds and unknown symbols are acknowledged and never send anything, as Binance does."""
    try:
        request = json.loads(text)
        method, names, request_id = request["method"], request["params"], request["id"]
    except (ValueError, TypeError, KeyError):
        return Answer(replies=(_dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}),))
    if method not in METHODS or not isinstance(names, list):
        return Answer(replies=(_dumps({"error": {"code": 1, "msg": "Invalid request"}, "id": request_id}),))
    symbols = tuple(symbol for symbol in map(_depth_symbol(venue), names) if symbol is not None)
    reply = _dumps({"result": None, "id": request_id})
    if method == "UNSUBSCRIBE":
        return Answer(replies=(reply,), unsubscribe=symbols)
    return Answer(replies=(reply,), subscribe=tuple(Subscription(symbol) for symbol in symbols))


def _depth_symbol(venue: EmulatedVenue) -> Any:
    ids = {market_id(market).lower(): market.symbol for market in venue.markets.values()}

    def symbol(name: Any) -> str | None:
        parts = str(name).split("@")
        if len(parts) < 2 or parts[1] != "depth":
            return None
        return ids.get(parts[0])

    return symbol


def snapshot(market: Market, subscription: Subscription, book: Book, damaged: bool) -> str | None:
    return None  # the client reads /api/v3/depth


def update(market: Market, subscription: Subscription, old: Book | None, new: Book, damaged: bool) -> str:
    """The depthUpdate event of one change (sent even when no level changed: its ids count)."""
    first = new.version if old is None else old.version + 1
    bids = _levels(old.bids if old else (), new.bids)
    asks = _levels(old.asks if old else (), new.asks)
    # Written out rather than through json: every value is a number or plain ASCII text.
    return (
        f'{{"e":"depthUpdate","E":{time.time_ns() // 1_000_000},"s":"{market_id(market)}",'
        f'"U":{first},"u":{new.version},"b":[{bids}],"a":[{asks}]}}'
    )


def _levels(before: tuple[Level, ...], after: tuple[Level, ...]) -> str:
    return ",".join(
        f'["{number(price)}","{number(amount)}"]' for price, amount in changed_levels(before, after)
    )
