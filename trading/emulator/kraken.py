"""The Kraken REST dialect: the public endpoints ccxt's kraken uses to read books and bars.

Bodies follow https://docs.kraken.com/api-reference/: every answer is {"error": [...], "result":
...}; assets have ids and altnames (BTC is "XXBT", altname "XBT"); pairs are keyed by id
("XBTUSDT"); book levels are [price, volume, unix seconds] with prices and volumes as strings.
The real OHLC endpoint keeps only the latest 720 bars; the emulator serves any window it was given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from email.utils import formatdate
from typing import Any

from trading.emulator.server import Candle, EmulatedVenue, Handler, Level, Market, Reply, Request

DEFAULT_DEPTH = 100
MAX_OHLC = 720
# Kraken's legacy X/Z-prefixed asset ids and altnames; newer assets use their code for both.
ASSET_IDS = {"BTC": ("XXBT", "XBT"), "ETH": ("XETH", "ETH"), "USD": ("ZUSD", "USD"), "EUR": ("ZEUR", "EUR")}

_FAULTS = {
    429: "EAPI:Rate limit exceeded",
    500: "EGeneral:Internal error",
    503: "EService:Unavailable",
}


def asset_id(code: str) -> str:
    return ASSET_IDS.get(code, (code, code))[0]


def altname(code: str) -> str:
    return ASSET_IDS.get(code, (code, code))[1]


def market_id(market: Market) -> str:
    return f"{altname(market.base)}{altname(market.quote)}"


def _ok(result: Any) -> Reply:
    return Reply(200, {"error": [], "result": result})


def fault_reply(status: int) -> Reply:
    return Reply(status, {"error": [_FAULTS.get(status, "EGeneral:Internal error")]})


def _decimals(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


def server_time(venue: EmulatedVenue, request: Request) -> Reply:
    now = time.time()
    return _ok({"unixtime": int(now), "rfc1123": formatdate(now, usegmt=True)})


def _codes(venue: EmulatedVenue) -> list[str]:
    return sorted({code for market in venue.markets.values() for code in (market.base, market.quote)})


def assets(venue: EmulatedVenue, request: Request) -> Reply:
    return _ok(
        {
            asset_id(code): {
                "aclass": "currency",
                "altname": altname(code),
                "decimals": 10 if code in ASSET_IDS else 8,
                "display_decimals": 5,
                "status": "enabled",
            }
            for code in _codes(venue)
        }
    )


def _pair(market: Market) -> dict[str, Any]:
    return {
        "altname": market_id(market),
        "wsname": f"{altname(market.base)}/{altname(market.quote)}",
        "aclass_base": "currency",
        "base": asset_id(market.base),
        "aclass_quote": "currency",
        "quote": asset_id(market.quote),
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": _decimals(market.tick),
        "lot_decimals": _decimals(market.step),
        "lot_multiplier": 1,
        "leverage_buy": [],
        "leverage_sell": [],
        "fees": [[0, 0.26], [50000, 0.24], [100000, 0.22]],
        "fees_maker": [[0, 0.16], [50000, 0.14], [100000, 0.12]],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": format(market.min_amount, "f"),
        "costmin": format(market.min_cost, "f"),
        "tick_size": format(market.tick, "f"),
        "status": "online",
    }


def asset_pairs(venue: EmulatedVenue, request: Request) -> Reply:
    return _ok({market_id(market): _pair(market) for market in venue.markets.values()})


def _levels(levels: tuple[Level, ...], count: int, stamp: int) -> list[list[Any]]:
    return [[format(price, "f"), format(amount, "f"), stamp] for price, amount in levels[:count]]


def _market(venue: EmulatedVenue, pair: str) -> Market | None:
    return next((m for m in venue.markets.values() if market_id(m) == pair.upper()), None)


def depth(venue: EmulatedVenue, request: Request) -> Reply:
    """GET /0/public/Depth?pair=XBTUSDT&count=N"""
    market = _market(venue, request.query.get("pair", ""))
    if market is None:
        return Reply(200, {"error": ["EQuery:Unknown asset pair"]})
    try:
        count = int(request.query.get("count", DEFAULT_DEPTH))
    except ValueError:
        return Reply(200, {"error": ["EGeneral:Invalid arguments"]})
    book, stamp = venue.book(market.symbol), int(time.time())
    return _ok(
        {
            market_id(market): {
                "asks": _levels(book.asks, count, stamp),
                "bids": _levels(book.bids, count, stamp),
            }
        }
    )


def _bar(candle: Candle) -> list[Any]:
    """[unix seconds, open, high, low, close, vwap, volume, trade count]; the close stands in for
    the vwap."""
    open_ms, opening, high, low, close, volume = candle
    prices = [format(value, "f") for value in (opening, high, low, close, close)]
    return [open_ms // 1000, *prices, format(volume, "f"), 1]


def ohlc(venue: EmulatedVenue, request: Request) -> Reply:
    """GET /0/public/OHLC?pair=XBTUSDT&interval=1[&since=unix seconds]: up to 720 one-minute bars
    opening after `since`, oldest first, and `last`, the since of the next call."""
    market = _market(venue, request.query.get("pair", ""))
    if market is None:
        return Reply(200, {"error": ["EQuery:Unknown asset pair"]})
    if request.query.get("interval", "1") != "1":
        return Reply(200, {"error": ["EGeneral:Invalid arguments:interval"]})
    try:
        since_ms = int(request.query.get("since", -1)) * 1000
    except ValueError:
        return Reply(200, {"error": ["EGeneral:Invalid arguments:since"]})
    chosen = [candle for candle in venue.candles(market.symbol) if candle[0] > since_ms][:MAX_OHLC]
    last = chosen[-1][0] // 1000 if chosen else since_ms // 1000
    return _ok({market_id(market): [_bar(candle) for candle in chosen], "last": last})


ROUTES: Mapping[tuple[str, str], Handler] = {
    ("GET", "/0/public/Time"): server_time,
    ("GET", "/0/public/Assets"): assets,
    ("GET", "/0/public/AssetPairs"): asset_pairs,
    ("GET", "/0/public/Depth"): depth,
    ("GET", "/0/public/OHLC"): ohlc,
}
