"""The Binance spot REST dialect: the public endpoints ccxt's binance uses to read books and bars.

Bodies follow https://developers.binance.com/docs/binance-spot-api-docs/rest-api: market ids are
base+quote ("BTCUSDT"), numbers are strings with eight decimals, errors are {"code", "msg"}.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from trading.emulator.server import Candle, EmulatedVenue, Handler, Level, Market, Reply, Request

MAX_DEPTH = 5000
DEFAULT_DEPTH = 100
MAX_KLINES = 1000
DEFAULT_KLINES = 500
MINUTE_MS = 60_000

_FAULTS = {
    418: (-1003, "Way too much request weight used; IP banned until later."),
    429: (-1003, "Too much request weight used; current limit is 6000 request weight per 1 MINUTE."),
    500: (-1001, "Internal error; unable to process your request. Please try again."),
    503: (-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
}


def market_id(market: Market) -> str:
    return f"{market.base}{market.quote}"


def fault_reply(status: int) -> Reply:
    code, message = _FAULTS.get(status, (-1000, "An unknown error occurred while processing the request."))
    return Reply(status, {"code": code, "msg": message})


def _number(value: Decimal) -> str:
    return f"{value:.8f}"


def _error(code: int, message: str) -> Reply:
    return Reply(400, {"code": code, "msg": message})


def ping(venue: EmulatedVenue, request: Request) -> Reply:
    return Reply(200, {})


def server_time(venue: EmulatedVenue, request: Request) -> Reply:
    return Reply(200, {"serverTime": time.time_ns() // 1_000_000})


def _symbol_info(market: Market) -> dict[str, Any]:
    return {
        "symbol": market_id(market),
        "status": "TRADING",
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _number(market.tick),
                "maxPrice": _number(Decimal(1_000_000)),
                "tickSize": _number(market.tick),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": _number(market.min_amount),
                "maxQty": _number(Decimal(9_000)),
                "stepSize": _number(market.step),
            },
            {"filterType": "NOTIONAL", "minNotional": _number(market.min_cost), "applyMinToMarket": True},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
    }


def exchange_info(venue: EmulatedVenue, request: Request) -> Reply:
    return Reply(
        200,
        {
            "timezone": "UTC",
            "serverTime": time.time_ns() // 1_000_000,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(market) for market in venue.markets.values()],
        },
    )


def _levels(levels: tuple[Level, ...], limit: int) -> list[list[str]]:
    return [[_number(price), _number(amount)] for price, amount in levels[:limit]]


def _market(venue: EmulatedVenue, raw_id: str) -> Market | None:
    return next((m for m in venue.markets.values() if market_id(m) == raw_id.upper()), None)


def depth(venue: EmulatedVenue, request: Request) -> Reply:
    """GET /api/v3/depth?symbol=BTCUSDT&limit=N"""
    market = _market(venue, request.query.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    try:
        limit = min(int(request.query.get("limit", DEFAULT_DEPTH)), MAX_DEPTH)
    except ValueError:
        return _error(-1100, "Illegal characters found in parameter 'limit'.")
    book = venue.book(market.symbol)
    return Reply(
        200,
        {"lastUpdateId": book.version, "bids": _levels(book.bids, limit), "asks": _levels(book.asks, limit)},
    )


def _kline(candle: Candle) -> list[Any]:
    """Open time, open, high, low, close, volume, close time, quote volume, trades, taker buy base,
    taker buy quote, ignore."""
    open_ms, opening, high, low, close, volume = candle
    numbers = [_number(value) for value in (opening, high, low, close, volume)]
    return [open_ms, *numbers, open_ms + MINUTE_MS - 1, _number(volume * close), 1, "0", "0", "0"]


def klines(venue: EmulatedVenue, request: Request) -> Reply:
    """GET /api/v3/klines?symbol=BTCUSDT&interval=1m[&startTime=ms][&endTime=ms][&limit=N]:
    the oldest `limit` one-minute bars opening in [startTime, endTime]."""
    market = _market(venue, request.query.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    if request.query.get("interval") != "1m":
        return _error(-1120, "Invalid interval.")
    try:
        start = int(request.query.get("startTime", 0))
        end = int(request.query.get("endTime", 2**63))
        limit = min(int(request.query.get("limit", DEFAULT_KLINES)), MAX_KLINES)
    except ValueError:
        return _error(-1100, "Illegal characters found in a parameter.")
    chosen = [candle for candle in venue.candles(market.symbol) if start <= candle[0] <= end]
    return Reply(200, [_kline(candle) for candle in chosen[:limit]])


ROUTES: Mapping[tuple[str, str], Handler] = {
    ("GET", "/api/v3/ping"): ping,
    ("GET", "/api/v3/time"): server_time,
    ("GET", "/api/v3/exchangeInfo"): exchange_info,
    ("GET", "/api/v3/depth"): depth,
    ("GET", "/api/v3/klines"): klines,
}
