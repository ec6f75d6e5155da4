"""The Binance spot REST dialect: the public endpoints ccxt's binance uses to read books and bars,
and the signed ones it uses to trade (account, order, myTrades, and the account's trade fees).

Bodies follow https://developers.binance.com/docs/binance-spot-api-docs/rest-api: market ids are
base+quote ("BTCUSDT"), numbers are strings with eight decimals, errors are {"code", "msg"}.
Signed requests carry X-MBX-APIKEY and end in `signature`, the HMAC-SHA256 of everything before
it, with a `timestamp` inside `recvWindow` of the server's clock. Private amounts are served
exactly (the emulator's fees can have more than eight decimals).

Client order ids follow the spot API: `newClientOrderId` must match CLIENT_ID_RULE (else -1100);
it is "a unique id among open orders" ("accepted only when the previous one is filled or
expired"), and a cancel's own `newClientOrderId` (generated when not sent) "will replace
clientOrderId of the canceled order, freeing it up for new orders". A query by
`origClientOrderId` answers the newest order carrying it.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from devtools.emulator import auth, matching
from devtools.emulator.matching import Account, Order, OrderState, Refusal, Refused, Trade
from devtools.emulator.rest import Handler, PrivateHandler, Reply, Request
from devtools.emulator.venue import Candle, EmulatedVenue, Level, Market

MAX_DEPTH = 5000
DEFAULT_DEPTH = 100
MAX_KLINES = 1000
DEFAULT_KLINES = 500
MINUTE_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60_000
# Binance accepts a timestamp up to a second ahead of its clock.
AHEAD_MS = 1000
# newClientOrderId, as the spot API states it in its -1100 answer and parameter description.
CLIENT_ID_RULE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
_CLIENT_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")

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


@functools.lru_cache(maxsize=1 << 16)  # streamed books repeat their prices and amounts
def number(value: Decimal) -> str:
    """A price or amount as Binance writes it: text with eight decimals."""
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
                "minPrice": number(market.tick),
                "maxPrice": number(Decimal(1_000_000)),
                "tickSize": number(market.tick),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": number(market.min_amount),
                "maxQty": number(Decimal(9_000)),
                "stepSize": number(market.step),
            },
            {"filterType": "NOTIONAL", "minNotional": number(market.min_cost), "applyMinToMarket": True},
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
    return [[number(price), number(amount)] for price, amount in levels[:limit]]


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
    numbers = [number(value) for value in (opening, high, low, close, volume)]
    return [open_ms, *numbers, open_ms + MINUTE_MS - 1, number(volume * close), 1, "0", "0", "0"]


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


def _exact(value: Decimal) -> str:
    return format(value, "f")


_REFUSALS = {
    # Binance has no pending-cancel state (PENDING_CANCEL is "currently unused"): a second cancel
    # finds nothing it can cancel.
    Refusal.CANCEL_PENDING: (-2011, "Unknown order sent."),
    Refusal.DUPLICATE: (-2010, "Duplicate order sent."),
    Refusal.INSUFFICIENT: (-2010, "Account has insufficient balance for requested action."),
    Refusal.UNKNOWN_ORDER: (-2011, "Unknown order sent."),
}


def refusal_reply(refused: Refused) -> Reply:
    code, message = _REFUSALS.get(refused.refusal, (-2010, refused.reason))
    return _error(code, message)


def _params(request: Request) -> dict[str, str]:
    """Query and form fields together, as Binance reads a signed request."""
    return {**request.query, **request.form()}


def _signed_payload(request: Request) -> tuple[str, str]:
    """(what was signed, the signature): the query string for GET and DELETE, the body for POST."""
    payload = request.body.decode(errors="replace") if request.method == "POST" else request.raw_query
    signed, _, signature = payload.rpartition("&signature=")
    return signed, signature


def _timestamp_error(params: Mapping[str, str]) -> Reply | None:
    try:
        stamp = int(params["timestamp"])
        window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
    except (KeyError, ValueError):
        return _error(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
    if window > MAX_RECV_WINDOW_MS:
        return _error(-1131, "recvWindow must be less than 60000")
    now = time.time_ns() // 1_000_000
    if stamp > now + AHEAD_MS or now - stamp > window:
        return _error(-1021, "Timestamp for this request is outside of the recvWindow.")
    return None


def authenticate(venue: EmulatedVenue, request: Request) -> Account | Reply:
    """The account whose key signed the request, or Binance's refusal."""
    account = venue.accounts.get(request.header("X-MBX-APIKEY"))
    if account is None:
        return Reply(401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
    signed, signature = _signed_payload(request)
    if not signature or not auth.same(auth.binance_signature(account.secret, signed), signature):
        return _error(-1022, "Signature for this request is not valid.")
    return _timestamp_error(_params(request)) or account


def account_info(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """GET /api/v3/account"""
    balances = [
        {"asset": asset, "free": _exact(amount), "locked": "0.00000000"}
        for asset, amount in sorted(account.balances.items())
    ]
    return Reply(
        200,
        {
            "makerCommission": _basis_points(venue.taker_fee),
            "takerCommission": _basis_points(venue.taker_fee),
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "updateTime": matching.now_ms(),
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
        },
    )


def _basis_points(rate: Decimal) -> int:
    return int(rate * 10_000)


def trade_fee(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """GET /sapi/v1/asset/tradeFee: the account's commission rates, for one symbol when asked."""
    wanted = _params(request).get("symbol")
    rate = _exact(venue.taker_fee)
    rows = [
        {"symbol": market_id(market), "makerCommission": rate, "takerCommission": rate}
        for market in venue.markets.values()
        if wanted in (None, market_id(market))
    ]
    if not rows:
        return _error(-1121, "Invalid symbol.")
    return Reply(200, rows)


def _status(order: Order) -> str:
    if order.state is OrderState.OPEN:
        return "PARTIALLY_FILLED" if order.filled else "NEW"
    return {OrderState.FILLED: "FILLED", OrderState.CANCELED: "CANCELED", OrderState.EXPIRED: "EXPIRED"}[
        order.state
    ]


def _order(order: Order) -> dict[str, Any]:
    return {
        "symbol": market_id(order.market),
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "price": _exact(order.price),
        "origQty": _exact(order.amount),
        "executedQty": _exact(order.filled),
        "cummulativeQuoteQty": _exact(order.cost),
        "status": _status(order),
        "timeInForce": order.time_in_force,
        "type": "LIMIT",
        "side": order.side.upper(),
        "stopPrice": "0.00000000",
        "icebergQty": "0.00000000",
        "time": order.created_ms,
        "updateTime": order.closed_ms or order.created_ms,
        "isWorking": True,
        "workingTime": order.created_ms,
        "origQuoteOrderQty": "0.00000000",
        "selfTradePreventionMode": "NONE",
    }


def _fill(trade: Trade) -> dict[str, Any]:
    return {
        "price": _exact(trade.price),
        "qty": _exact(trade.amount),
        "commission": _exact(trade.fee),
        "commissionAsset": trade.fee_asset,
        "tradeId": trade.trade_id,
    }


def _illegal(param: str) -> Reply:
    message = f"Illegal characters found in parameter '{param}'; legal range is '{CLIENT_ID_RULE}'."
    return _error(-1100, message)


def _client_id_error(params: Mapping[str, str]) -> Reply | None:
    """-1100 for a `newClientOrderId` that breaks the spot API's rule."""
    client_id = params.get("newClientOrderId")
    if client_id and not _CLIENT_ID.fullmatch(client_id):
        return _illegal("newClientOrderId")
    return None


def _order_terms(params: Mapping[str, str]) -> matching.OrderTerms | Reply:
    """The terms of a new LIMIT order, or Binance's refusal."""
    if params.get("type") != "LIMIT":
        return _error(-1116, "Invalid orderType.")
    side = params.get("side", "").lower()
    if side not in ("buy", "sell"):
        return _error(-1117, "Invalid side.")
    try:
        price, amount = Decimal(params["price"]), Decimal(params["quantity"])
    except (KeyError, ArithmeticError):
        return _error(-1102, "Mandatory parameter 'price' or 'quantity' was not sent or malformed.")
    if price <= 0 or amount <= 0:
        return _error(-1013, "Invalid quantity.")
    illegal = _client_id_error(params)
    if illegal is not None:
        return illegal
    return matching.OrderTerms(
        side, price, amount, params.get("timeInForce", "GTC"), params.get("newClientOrderId", "")
    )


def new_order(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /api/v3/order: a LIMIT order, matched at once; answered in the FULL form (with fills)."""
    params = _params(request)
    market = _market(venue, params.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    terms = _order_terms(params)
    if isinstance(terms, Reply):
        return terms
    try:
        order = matching.place_on(venue, account, market, terms)
    except Refused as refused:
        return refusal_reply(refused)
    fills = [_fill(trade) for trade in order.trades]
    return Reply(200, {**_order(order), "transactTime": order.created_ms, "fills": fills})


def _find(
    account: Account, market: Market, params: Mapping[str, str], *, ignore_client_id: bool = False
) -> Order:
    """The order named by orderId (on the symbol, and carrying origClientOrderId when that is
    sent too, as Binance checks both), else the newest order carrying origClientOrderId; with
    `ignore_client_id`, the newest order on the symbol whatever its client id. Raises
    Refused(UNKNOWN_ORDER)."""
    client_id = None if ignore_client_id else params.get("origClientOrderId") or None
    raw_id = params.get("orderId")
    if raw_id:
        order = account.by_id(_order_id(raw_id))
        if order.market != market or client_id not in (None, order.client_order_id):
            raise Refused(Refusal.UNKNOWN_ORDER)
        return order
    if ignore_client_id and params.get("origClientOrderId"):
        return account.newest(market.symbol)
    if client_id is None:
        raise Refused(Refusal.UNKNOWN_ORDER)
    return account.latest(client_id, market.symbol)


def _order_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise Refused(Refusal.UNKNOWN_ORDER) from None


def query_order(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """GET /api/v3/order?symbol=...&origClientOrderId=... (or orderId)"""
    params = _params(request)
    market = _market(venue, params.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    try:
        order = _find(account, market, params, ignore_client_id=venue.fault.ignore_client_id_filter)
    except Refused:
        return _error(-2013, "Order does not exist.")
    matching.read(venue, account, [order])
    return Reply(200, _order(order))


def cancel_order(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """DELETE /api/v3/order?symbol=...&origClientOrderId=... (or orderId)[&newClientOrderId=...]:
    -2011 for an order that is unknown or already closed. The answer names the order's client id
    as origClientOrderId and the cancel's as clientOrderId, which the order carries once
    cancelled; a cancel left pending answers the order's status of the moment."""
    params = _params(request)
    market = _market(venue, params.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    illegal = _client_id_error(params)
    if illegal is not None:
        return illegal
    cancel_id = params.get("newClientOrderId") or _generated_id()
    try:
        order = _find(account, market, params)
        original = order.client_order_id
        matching.cancel_on(venue, account, order, relabel=cancel_id)
    except Refused as refused:
        return refusal_reply(refused)
    answer = {**_order(order), "origClientOrderId": original, "clientOrderId": cancel_id}
    return Reply(200, {**answer, "transactTime": matching.now_ms()})


def _generated_id() -> str:
    """A client id as Binance makes one when none is sent: 22 letters and digits."""
    return uuid.uuid4().hex[:22]


def my_trades(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """GET /api/v3/myTrades?symbol=...[&orderId=...]: the account's trades, oldest first."""
    params = _params(request)
    market = _market(venue, params.get("symbol", ""))
    if market is None:
        return _error(-1121, "Invalid symbol.")
    order_id = params.get("orderId")
    trades = [t for t in account.trades(market.symbol) if order_id is None or str(t.order_id) == order_id]
    return Reply(200, [_trade(trade, market) for trade in trades])


def _trade(trade: Trade, market: Market) -> dict[str, Any]:
    return {
        "symbol": market_id(market),
        "id": trade.trade_id,
        "orderId": trade.order_id,
        "orderListId": -1,
        "price": _exact(trade.price),
        "qty": _exact(trade.amount),
        "quoteQty": _exact(trade.cost),
        "commission": _exact(trade.fee),
        "commissionAsset": trade.fee_asset,
        "time": trade.time_ms,
        "isBuyer": trade.side == "buy",
        "isMaker": False,
        "isBestMatch": True,
    }


def new_order_client_id(request: Request) -> str | None:
    """The newClientOrderId of a POST /api/v3/order; None for other requests."""
    if (request.method, request.path) != ("POST", "/api/v3/order"):
        return None
    return _params(request).get("newClientOrderId") or None


PRIVATE_ROUTES: Mapping[tuple[str, str], PrivateHandler] = {
    ("GET", "/api/v3/account"): account_info,
    ("POST", "/api/v3/order"): new_order,
    ("GET", "/api/v3/order"): query_order,
    ("DELETE", "/api/v3/order"): cancel_order,
    ("GET", "/api/v3/myTrades"): my_trades,
    ("GET", "/sapi/v1/asset/tradeFee"): trade_fee,
}


ROUTES: Mapping[tuple[str, str], Handler] = {
    ("GET", "/api/v3/ping"): ping,
    ("GET", "/api/v3/time"): server_time,
    ("GET", "/api/v3/exchangeInfo"): exchange_info,
    ("GET", "/api/v3/depth"): depth,
    ("GET", "/api/v3/klines"): klines,
}
