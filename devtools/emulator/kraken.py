"""The Kraken REST dialect: the public endpoints ccxt's kraken uses to read books and bars, and
the private ones it uses to trade (BalanceEx, TradeVolume, AddOrder, QueryOrders, OpenOrders,
ClosedOrders, CancelOrder, TradesHistory).

Bodies follow https://docs.kraken.com/api-reference/: every answer is {"error": [...], "result":
...}; assets have ids and altnames (BTC is "XXBT", altname "XBT"); pairs are keyed by id
("XBTUSDT"); book levels are [price, volume, unix seconds] with prices and volumes as strings.
The real OHLC endpoint keeps only the latest 720 bars; the emulator serves any window it was given.
Private calls are POSTs signed with API-Key and API-Sign (HMAC-SHA512 of the URI path and
SHA256(nonce + body), keyed with the base64-decoded secret); each key's nonce must grow. A bad key
or signature is "EAPI:Invalid key", as Kraken answers both.

Client order ids follow Kraken's cl_ord_id guide (docs.kraken.com, "Spot Client Order
Identifiers"): a long UUID (36 characters), a short UUID (32 hex digits) or free text of up to 18
characters, anything else "EGeneral:Invalid arguments"; uniqueness is enforced "across open orders
for each client" only. Fees are in the quote currency unless the order's `oflags` asks for the
base (fcib) or the account pays otherwise; `oflags` on an order says which, as ccxt reads it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from email.utils import formatdate
from typing import Any

from devtools.emulator import auth, fees, matching
from devtools.emulator.matching import Account, Order, OrderState, Refusal, Refused, Trade
from devtools.emulator.rest import Handler, PrivateHandler, Reply, Request
from devtools.emulator.venue import Candle, EmulatedVenue, Level, Market

DEFAULT_DEPTH = 100
MAX_OHLC = 720
# Kraken's legacy X/Z-prefixed asset ids and altnames; newer assets use their code for both.
ASSET_IDS = {"BTC": ("XXBT", "XBT"), "ETH": ("XETH", "ETH"), "USD": ("ZUSD", "USD"), "EUR": ("ZEUR", "EUR")}

# cl_ord_id's formats, told apart by length.
_LONG_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SHORT_UUID = re.compile(r"[0-9a-fA-F]{32}")
MAX_FREE_TEXT = 18

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


@functools.cache
def decimals(step: Decimal) -> int:
    """How many decimals `step` has: the pair's precision for a tick (0.01: 2) or a lot step."""
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
        "pair_decimals": decimals(market.tick),
        "lot_decimals": decimals(market.step),
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


def _failed(error: str) -> Reply:
    return Reply(200, {"error": [error]})


def refusal_reply(refused: Refused) -> Reply:
    """Kraken's words for a refusal; a chosen rejection reason that is not already a Kraken
    error code becomes an invalid-order error."""
    if refused.refusal is Refusal.INSUFFICIENT:
        return _failed("EOrder:Insufficient funds")
    if refused.refusal is Refusal.UNKNOWN_ORDER:
        return _failed("EOrder:Unknown order")
    if refused.refusal is Refusal.DUPLICATE:
        return _failed("EOrder:Invalid order:duplicate cl_ord_id")
    if refused.refusal is Refusal.CANCEL_PENDING:
        return _failed("EOrder:Cancel pending")
    reason = refused.reason
    return _failed(reason if reason.startswith("E") and ":" in reason else f"EOrder:Invalid order:{reason}")


def authenticate(venue: EmulatedVenue, request: Request) -> Account | Reply:
    """The account whose key signed the request with a fresh nonce, or Kraken's refusal."""
    account = venue.accounts.get(request.header("API-Key"))
    nonce = request.form().get("nonce", "")
    if account is None or not _signed_by(account, request, nonce):
        return _failed("EAPI:Invalid key")
    if not nonce.isdigit() or int(nonce) <= account.last_nonce:
        return _failed("EAPI:Invalid nonce")
    account.last_nonce = int(nonce)
    return account


def _signed_by(account: Account, request: Request, nonce: str) -> bool:
    try:
        expected = auth.kraken_signature(account.secret, request.path, nonce, request.body)
    except ValueError:
        return False  # a secret that is not base64 can sign nothing
    return auth.same(expected, request.header("API-Sign"))


def balance_ex(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/BalanceEx: {asset id: {balance, hold_trade}}."""
    return _ok(
        {
            asset_id(code): {"balance": format(amount, "f"), "hold_trade": "0"}
            for code, amount in sorted(account.balances.items())
        }
    )


def trade_volume(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/TradeVolume: the 30-day volume and, for each pair asked, the fee tier in
    percent (the emulator charges one rate, taker and maker alike, and has no next tier)."""
    pairs = [pair for pair in request.form().get("pair", "").split(",") if pair]
    if any(_market(venue, pair) is None for pair in pairs):
        return _failed("EQuery:Unknown asset pair")
    percent = format((venue.taker_fee * 100).normalize(), "f")
    tier = {"fee": percent, "minfee": percent, "maxfee": percent, "tiervolume": "0.0000"}
    tiers = dict.fromkeys(pairs, tier)
    return _ok({"currency": "ZUSD", "volume": "0.0000", "fees": tiers, "fees_maker": tiers})


def txid(order: Order) -> str:
    """Kraken-shaped order id: three dash-separated groups."""
    return f"O{order.order_id:06d}-EMULA-TOR{order.order_id % 1000:03d}"


def _trade_id(trade: Trade) -> str:
    return f"T{trade.trade_id:06d}-EMULA-TOR{trade.trade_id % 1000:03d}"


_STATUSES = {
    OrderState.OPEN: "open",
    OrderState.FILLED: "closed",
    OrderState.CANCELED: "canceled",
    OrderState.EXPIRED: "canceled",
}
_REASONS = {OrderState.CANCELED: "User requested", OrderState.EXPIRED: "Immediate or cancel"}


def _descr(order: Order) -> dict[str, str]:
    pair, price = market_id(order.market), format(order.price, "f")
    return {
        "pair": pair,
        "type": order.side,
        "ordertype": "limit",
        "price": price,
        "price2": "0",
        "leverage": "none",
        "order": f"{order.side} {format(order.amount, 'f')} {pair} @ limit {price}",
        "close": "",
    }


def _order_info(order: Order) -> dict[str, Any]:
    return {
        "refid": None,
        "userref": 0,
        "cl_ord_id": order.client_order_id,
        "status": _STATUSES[order.state],
        "reason": _REASONS.get(order.state),
        "opentm": order.created_ms / 1000,
        "closetm": (order.closed_ms or 0) / 1000,
        "starttm": 0,
        "expiretm": 0,
        "descr": _descr(order),
        "vol": format(order.amount, "f"),
        "vol_exec": format(order.filled, "f"),
        "cost": format(order.cost, "f"),
        "fee": format(order.fee, "f"),
        "price": format(order.average, "f"),
        "stopprice": "0",
        "limitprice": "0",
        "misc": "",
        "oflags": _oflags(order),
        "timeinforce": order.time_in_force,
        "trades": [_trade_id(trade) for trade in order.trades],
    }


def _oflags(order: Order) -> str:
    """fciq or fcib: the currency the order's fees are charged in, which ccxt reads from here."""
    asset = fees.usual_asset(order.fee_asset, order.market, order.side)
    return {order.market.quote: "fciq", order.market.base: "fcib"}.get(asset, "")


def valid_client_id(text: str) -> bool:
    """A cl_ord_id Kraken accepts: a long UUID (32 hex digits in dashed 8-4-4-4-12 groups), a
    short UUID (32 hex digits) or free ASCII text of up to 18 characters."""
    if len(text) == 36:
        return _LONG_UUID.fullmatch(text) is not None
    if len(text) == 32:
        return _SHORT_UUID.fullmatch(text) is not None
    return len(text) <= MAX_FREE_TEXT and text.isascii() and text.isprintable()


def _fee_choice(oflags: str) -> str | None:
    """The order's own fee currency from its flags: fcib the base, fciq the quote, else None.
    Raises ValueError for both at once (Kraken: mutually exclusive)."""
    flags = set(oflags.split(","))
    if {"fcib", "fciq"} <= flags:
        raise ValueError("fcib and fciq")
    if "fcib" in flags:
        return fees.BASE
    return fees.QUOTE if "fciq" in flags else None


def _order_terms(form: Mapping[str, str]) -> matching.OrderTerms | Reply:
    """The terms of a new limit order, or Kraken's refusal."""
    if form.get("ordertype") != "limit":
        return _failed("EGeneral:Invalid arguments:ordertype")
    side = form.get("type", "")
    if side not in ("buy", "sell"):
        return _failed("EGeneral:Invalid arguments:type")
    try:
        price, amount = Decimal(form["price"]), Decimal(form["volume"])
    except (KeyError, ArithmeticError):
        return _failed("EGeneral:Invalid arguments:volume")
    if price <= 0 or amount <= 0:
        return _failed("EGeneral:Invalid arguments:volume")
    client_id = form.get("cl_ord_id", "")
    if client_id and not valid_client_id(client_id):
        return _failed("EGeneral:Invalid arguments")
    try:
        fee_asset = _fee_choice(form.get("oflags", ""))
    except ValueError:
        return _failed("EGeneral:Invalid arguments:oflags")
    return matching.OrderTerms(side, price, amount, form.get("timeinforce", "GTC"), client_id, fee_asset)


def add_order(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/AddOrder: a limit order, matched at once; answers its txid only, as Kraken
    does (the fill is read with QueryOrders)."""
    form = request.form()
    market = _market(venue, form.get("pair", ""))
    if market is None:
        return _failed("EQuery:Unknown asset pair")
    terms = _order_terms(form)
    if isinstance(terms, Reply):
        return terms
    try:
        order = matching.place_on(venue, account, market, terms)
    except Refused as refused:
        return refusal_reply(refused)
    return _ok({"descr": {"order": _descr(order)["order"]}, "txid": [txid(order)]})


def _by_txid(account: Account, wanted: str) -> Order:
    order = next((order for order in account.orders if txid(order) == wanted), None)
    if order is None:
        raise Refused(Refusal.UNKNOWN_ORDER)
    return order


def query_orders(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/QueryOrders with txid (comma-separated): {txid: order}."""
    try:
        orders = [_by_txid(account, wanted) for wanted in request.form().get("txid", "").split(",")]
    except Refused:
        return _failed("EOrder:Invalid order")
    matching.read(venue, account, orders)
    return _ok({txid(order): _order_info(order) for order in orders})


def _chosen(venue: EmulatedVenue, account: Account, form: Mapping[str, str], open_: bool) -> dict[str, Any]:
    """The account's open (or closed) orders, newest first; only those carrying `cl_ord_id` when
    it is given (and the venue does not ignore it)."""
    client_id = form.get("cl_ord_id") or None
    if venue.fault.ignore_client_id_filter:
        client_id = None
    considered = [order for order in reversed(account.orders) if client_id in (None, order.client_order_id)]
    matching.read(venue, account, considered)
    return {
        txid(order): _order_info(order) for order in considered if (order.state is OrderState.OPEN) == open_
    }


def open_orders(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/OpenOrders[cl_ord_id=...]"""
    return _ok({"open": _chosen(venue, account, request.form(), open_=True)})


def closed_orders(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/ClosedOrders[cl_ord_id=...]"""
    closed = _chosen(venue, account, request.form(), open_=False)
    return _ok({"closed": closed, "count": len(closed)})


def _named(account: Account, form: Mapping[str, str]) -> Order:
    """The order named by cl_ord_id (the newest carrying it: the open one, if any), else by
    txid; raises Refused(UNKNOWN_ORDER)."""
    client_id = form.get("cl_ord_id")
    return account.latest(client_id) if client_id else _by_txid(account, form.get("txid", ""))


def cancel_order(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/CancelOrder with txid or cl_ord_id: "EOrder:Unknown order" for an order
    that is unknown or already closed, "EOrder:Cancel pending" while its cancel is; `pending`
    says whether the cancel is still to land."""
    form = request.form()
    try:
        order = _named(account, form)
        matching.cancel_on(venue, account, order)
    except Refused as refused:
        return refusal_reply(refused)
    return _ok({"count": 1, "pending": order.pending_cancel is not None})


def _trade(trade: Trade, order: Order) -> dict[str, Any]:
    return {
        "ordertxid": txid(order),
        "postxid": "PEMULA-TOR000-000000",
        "pair": market_id(order.market),
        "time": trade.time_ms / 1000,
        "type": trade.side,
        "ordertype": "limit",
        "price": format(trade.price, "f"),
        "cost": format(trade.cost, "f"),
        "fee": format(trade.fee, "f"),
        "vol": format(trade.amount, "f"),
        "margin": "0",
        "misc": "",
        "trade_id": trade.trade_id,
        "maker": False,
    }


def trades_history(venue: EmulatedVenue, request: Request, account: Account) -> Reply:
    """POST /0/private/TradesHistory: every trade of the account."""
    trades = {_trade_id(trade): _trade(trade, order) for order in account.orders for trade in order.trades}
    return _ok({"trades": trades, "count": len(trades)})


def new_order_client_id(request: Request) -> str | None:
    """The cl_ord_id of a POST /0/private/AddOrder; None for other requests."""
    if (request.method, request.path) != ("POST", "/0/private/AddOrder"):
        return None
    return request.form().get("cl_ord_id") or None


PRIVATE_ROUTES: Mapping[tuple[str, str], PrivateHandler] = {
    ("POST", "/0/private/BalanceEx"): balance_ex,
    ("POST", "/0/private/TradeVolume"): trade_volume,
    ("POST", "/0/private/AddOrder"): add_order,
    ("POST", "/0/private/QueryOrders"): query_orders,
    ("POST", "/0/private/OpenOrders"): open_orders,
    ("POST", "/0/private/ClosedOrders"): closed_orders,
    ("POST", "/0/private/CancelOrder"): cancel_order,
    ("POST", "/0/private/TradesHistory"): trades_history,
}


ROUTES: Mapping[tuple[str, str], Handler] = {
    ("GET", "/0/public/Time"): server_time,
    ("GET", "/0/public/Assets"): assets,
    ("GET", "/0/public/AssetPairs"): asset_pairs,
    ("GET", "/0/public/Depth"): depth,
    ("GET", "/0/public/OHLC"): ohlc,
}
