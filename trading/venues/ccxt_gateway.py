"""The ccxt gateway: any exchange ccxt knows, through its async client.

ccxt's errors stop here: every one is translated into a trading.venues.base error. Without
credentials a gateway reads books only; with them (and an order dialect for its exchange in
ORDER_DIALECTS) it also trades: immediate-or-cancel limit orders under our client order ids,
found again by those ids. The key and secret never appear in a log line, an exception or a repr.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support as ccxt
from django.conf import settings

from trading.clock import now_ms
from trading.core.ledger import Charge
from trading.core.numbers import plain
from trading.core.types import ZERO, Fill, MarketRules, Quote, split_symbol
from trading.core.validate import parse_quote
from trading.venues.base import (
    InsufficientBalance,
    OrderNotFound,
    OrderRejected,
    OrderRequest,
    OrderResult,
    QuotesOnly,
    TemporaryVenueError,
    VenueError,
)
from trading.venues.pacing import SharedPacer

log = logging.getLogger(__name__)

# Per-exchange client options. Binance would otherwise also load its futures markets (from other
# hosts), ask a signed endpoint for currencies and, holding a key, its margin pairs.
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False},
}

# Checked in order, most specific first. ccxt's OperationFailed is its branch of errors that may
# pass on a retry: network trouble, timeouts, rate limits, unavailability, garbled answers.
ERROR_TRANSLATIONS: tuple[tuple[type[Exception], type[VenueError]], ...] = (
    (ccxt.InsufficientFunds, InsufficientBalance),
    (ccxt.OrderNotFound, OrderNotFound),
    (ccxt.InvalidOrder, OrderRejected),
    (ccxt.OperationFailed, TemporaryVenueError),
    (ccxt.BaseError, VenueError),
)

MARKETS_TTL_S = 3600.0
# Markets per (ccxt id, API root), shared by the gateways of one process: a collection round
# builds a fresh gateway, and reloading markets every round would spend the venue's rate limit on
# data that changes a few times a year.
_markets: dict[tuple[str, str], tuple[float, dict[str, Any], dict[str, Any]]] = {}


REDACTED = "[redacted]"


def redact(text: str, secrets: tuple[str, ...] | set[str]) -> str:
    """`text` with every secret replaced (the longest first, so one inside another goes whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class CredentialRedaction(logging.Filter):
    """Masks every API key and secret a gateway was given in the records of the logger it is on.

    ccxt logs each request with its headers at DEBUG, and Binance's headers carry the API key;
    the settings-wide redaction only knows secrets from the environment and settings.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True


# The logger of every client that holds credentials: ccxt's request and response lines go here.
WIRE_LOG = logging.getLogger(f"{__name__}.wire")
_credential_redaction = CredentialRedaction()
WIRE_LOG.addFilter(_credential_redaction)


def translate_error(venue: str, exc: Exception, secrets: tuple[str, ...] = ()) -> VenueError:
    """Our named error for a ccxt exception, its message naming ccxt's class for the record and
    free of `secrets`."""
    ours = next(cls for ccxt_cls, cls in ERROR_TRANSLATIONS if isinstance(exc, ccxt_cls))
    return ours(redact(f"{venue}: {type(exc).__name__}: {exc}", secrets))


def rewrite_api_urls(urls: Any, root: str) -> Any:
    """Every URL in ccxt's `urls["api"]` (a str or nested dicts of them) moved under `root`, in
    its scheme: https://api.binance.com/api/v3 under http://127.0.0.1:8000/binance becomes
    http://127.0.0.1:8000/binance/api/v3, and wss://stream.binance.com:9443/ws under
    ws://127.0.0.1:8000/binance becomes ws://127.0.0.1:8000/binance/ws."""
    if isinstance(urls, dict):
        return {key: rewrite_api_urls(value, root) for key, value in urls.items()}
    if not isinstance(urls, str):
        return urls
    base, original = urlsplit(root), urlsplit(urls)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, ""))


# The entry of ccxt's urls["api"] that holds a websocket client's roots (ccxt.pro's).
WEBSOCKET_URLS = "ws"


def pointed_urls(api: Any, api_url: str, stream_url: str = "") -> Any:
    """ccxt's `urls["api"]` with its REST URLs under `api_url` and its websocket URLs (the "ws"
    entry of a ccxt.pro client) under `stream_url`, each only when given."""
    if not isinstance(api, dict):
        return rewrite_api_urls(api, api_url) if api_url else api
    pointed = {}
    for key, urls in api.items():
        root = stream_url if key == WEBSOCKET_URLS else api_url
        pointed[key] = rewrite_api_urls(urls, root) if root else urls
    return pointed


def _overloads_are_temporary(exchange: Any) -> None:
    """Make HTTP 429 and 5xx temporary errors whatever their body says.

    ccxt lets a venue's body error code decide first, and some venues word overload as a plain
    error (binance's 503 carries -1008, which ccxt calls ExchangeError). The status code is the
    venue's own statement that the request may pass later.
    """
    default = exchange.on_rest_response

    def on_rest_response(code: int, reason: str, url: str, method: str, *rest: Any) -> Any:
        if code == 429:
            raise ccxt.RateLimitExceeded(f"{exchange.id} {method} {url} {code} {reason}")
        if code >= 500:
            raise ccxt.ExchangeNotAvailable(f"{exchange.id} {method} {url} {code} {reason}")
        return default(code, reason, url, method, *rest)

    exchange.on_rest_response = on_rest_response


# Venues that refuse a private call whose nonce is not above the last one they saw for the key.
NONCE_ORDERED = frozenset({"kraken"})


def _private_calls_take_turns(exchange: Any) -> None:
    """Kraken refuses a private call whose nonce is not above the last it saw for the API key, and
    ccxt's nonce is the millisecond: two calls signed in the same millisecond (a balance and a fee
    tier read together, say) carry the same one, and concurrent calls may land in either order. So
    a client's private calls take turns, each with a nonce above the one before. (Processes sharing
    a key are the key's nonce window's business: set one on the venue.)"""
    last = [0]
    default_nonce, default_fetch2 = exchange.nonce, exchange.fetch2
    turn = asyncio.Lock()

    def nonce() -> int:
        last[0] = max(int(default_nonce()), last[0] + 1)
        return last[0]

    async def fetch2(path: str, api: Any = "public", *args: Any, **kwargs: Any) -> Any:
        if "private" not in (api if isinstance(api, list) else [api]):
            return await default_fetch2(path, api, *args, **kwargs)
        async with turn:
            return await default_fetch2(path, api, *args, **kwargs)

    exchange.nonce, exchange.fetch2 = nonce, fetch2


def open_exchange(
    ccxt_id: str,
    api_url: str,
    timeout_ms: int,
    credentials: tuple[str, str] | None = None,
    *,
    rate_limited: bool = True,
    stream_url: str = "",
    library: Any = ccxt,
    options: dict[str, Any] | None = None,
) -> Any:
    """A ccxt client of `library` (ccxt's async clients, or ccxt.pro's websocket ones), rate
    limited unless told otherwise, its REST API pointed at `api_url` and its websocket API at
    `stream_url` when given, signing with `credentials` (api key, secret) when given, with
    `options` over the exchange's own."""
    if ccxt_id not in library.exchanges:
        raise VenueError(f"ccxt knows no exchange {ccxt_id!r}")
    config: dict[str, Any] = {
        "enableRateLimit": rate_limited,
        "timeout": timeout_ms,
        "options": {**EXCHANGE_OPTIONS.get(ccxt_id, {}), **(options or {})},
    }
    if credentials is not None:
        config["apiKey"], config["secret"] = credentials
        config["logger"] = WIRE_LOG
        _credential_redaction.secrets.update(credentials)
    exchange = getattr(library, ccxt_id)(config)
    exchange.urls = {**exchange.urls, "api": pointed_urls(exchange.urls["api"], api_url, stream_url)}
    _overloads_are_temporary(exchange)
    if ccxt_id in NONCE_ORDERED:
        _private_calls_take_turns(exchange)
    return exchange


async def load_markets(exchange: Any, key: tuple[str, str], venue: str) -> None:
    """Give `exchange` its markets, once: those this process loaded for `key` (ccxt id, API root)
    within the hour, else loaded now. Raises ccxt's errors."""
    if exchange.markets:
        return
    cached = _markets.get(key)
    if cached is not None and time.monotonic() - cached[0] < MARKETS_TTL_S:
        exchange.set_markets(cached[1], cached[2])
        return
    await exchange.load_markets()
    _markets[key] = (time.monotonic(), exchange.markets, exchange.currencies)
    log.info("%s: loaded %d markets", venue, len(exchange.markets))


def book_payload(venue: str, symbol: str, book: dict[str, Any], depth: int) -> dict[str, Any]:
    """ccxt's order book as parse_quote's payload: received now, numbered later (seq 0).

    ccxt parses prices and amounts as floats; parse_quote reads a float through its shortest repr,
    which gives back the venue's decimal string for up to 15 significant digits.
    """
    return {
        "venue": venue,
        "symbol": symbol,
        "seq": 0,
        "received_ts": now_ms(),
        "venue_ts": book.get("timestamp"),
        "bids": [level[:2] for level in book.get("bids") or []][:depth],
        "asks": [level[:2] for level in book.get("asks") or []][:depth],
    }


def decimal(value: Any) -> Decimal | None:
    """ccxt's float (or string) as the Decimal the venue sent: floats go through their shortest
    repr, which gives back the venue's decimal string for up to 15 significant digits."""
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True)
class OrderDialect:
    """How one exchange's ccxt client takes our client order id, and finds an order by it.

    `create_params` are the extra parameters of an immediate-or-cancel limit order; `find`
    returns ccxt's order with that client id (raising ccxt.OrderNotFound when there is none);
    `cancel_params` name the order to cancel; `trades_params` narrow my-trades to one venue
    order id where the venue can.
    """

    create_params: Callable[[str], dict[str, Any]]
    find: Callable[[Any, str, str], Awaitable[dict[str, Any]]]
    cancel_params: Callable[[str], dict[str, Any]]
    trades_params: Callable[[str], dict[str, Any]]


def ours(order: dict[str, Any], client_order_id: str) -> bool:
    """Whether the order the venue returned carries our client order id."""
    return order.get("clientOrderId") == client_order_id


def binance_cancel_id(client_order_id: str) -> str:
    """The client order id a cancel gives our order on Binance, which relabels a cancelled order
    with the cancel's own id: ours with an "x", so the order can still be found by it."""
    return f"{client_order_id}x"


async def _binance_find(exchange: Any, client_order_id: str, symbol: str) -> dict[str, Any]:
    """By our client order id, or by the one our cancel gave it. An answer naming another order (a
    venue ignoring the filter) is not ours, and leaves it unknown whether ours exists."""
    for wanted in (client_order_id, binance_cancel_id(client_order_id)):
        try:
            order: dict[str, Any] = await exchange.fetch_order(None, symbol, {"origClientOrderId": wanted})
        except ccxt.OrderNotFound:
            continue
        if ours(order, wanted):
            return order
        # The venue ignored the filter: whether ours exists is unknown, which is not "never placed".
        raise ccxt.ExchangeError(f"{exchange.id} answered a lookup of {wanted} with another order")
    raise ccxt.OrderNotFound(f"{exchange.id} has no order {client_order_id}")


async def _kraken_find(exchange: Any, client_order_id: str, symbol: str) -> dict[str, Any]:
    """Kraken's QueryOrders wants a txid; its open and closed order lists filter by cl_ord_id (an
    answer listing other orders too is searched for ours)."""
    for fetch in (exchange.fetch_open_orders, exchange.fetch_closed_orders):
        orders: list[dict[str, Any]] = await fetch(symbol, None, None, {"cl_ord_id": client_order_id})
        mine = [order for order in orders if ours(order, client_order_id)]
        if mine:
            return mine[0]
    raise ccxt.OrderNotFound(f"{exchange.id} has no order {client_order_id}")


ORDER_DIALECTS: dict[str, OrderDialect] = {
    "binance": OrderDialect(
        create_params=lambda cid: {"newClientOrderId": cid, "timeInForce": "IOC"},
        find=_binance_find,
        cancel_params=lambda cid: {"origClientOrderId": cid, "newClientOrderId": binance_cancel_id(cid)},
        trades_params=lambda order_id: {"orderId": order_id},
    ),
    "kraken": OrderDialect(
        create_params=lambda cid: {"clientOrderId": cid, "timeInForce": "IOC"},
        find=_kraken_find,
        cancel_params=lambda cid: {"clientOrderId": cid},
        trades_params=lambda order_id: {},
    ),
}

# ccxt's unified statuses of an order the venue is done with (nothing more will fill).
_FINISHED = {"closed", "canceled", "expired"}


def order_status(ccxt_status: str | None, amount: Decimal, filled: Decimal) -> str:
    """Our status for an order ccxt reports: filled, partial (finished with some filled),
    canceled (finished with nothing filled), rejected or open."""
    if ccxt_status == "rejected":
        return "rejected"
    if ccxt_status not in _FINISHED:
        return "open"
    if filled >= amount:
        return "filled"
    return "partial" if filled > ZERO else "canceled"


def charge(fee: dict[str, Any] | None, quote: str) -> Charge | None:
    """One ccxt fee as the venue charged it (a fee naming no currency is in the quote currency, as
    ccxt reports the venues we trade)."""
    if not fee or fee.get("cost") is None:
        return None
    return Charge(fee.get("currency") or quote, decimal(fee["cost"]) or ZERO)


def stated_fees(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The fees ccxt's order states itself (not summed from its fills)."""
    return [fee for fee in order.get("fees") or [order.get("fee")] if fee and fee.get("cost") is not None]


def order_charges(order: dict[str, Any], symbol: str) -> tuple[tuple[Charge, ...], bool]:
    """The order's fees, each in its own asset, as the order states them, else summed over its
    fills; and whether the venue stated any (False for a filled order that said nothing)."""
    _, quote = split_symbol(symbol)
    stated = [charge(fee, quote) for fee in stated_fees(order)]
    if not stated:
        stated = [charge(trade.get("fee"), quote) for trade in order.get("trades") or []]
    charges = [one for one in stated if one is not None]
    totals: dict[str, Decimal] = {}
    for one in charges:
        totals[one.asset] = totals.get(one.asset, ZERO) + one.amount
    filled = decimal(order.get("filled")) or ZERO
    charged = tuple(Charge(asset, amount) for asset, amount in totals.items() if amount)
    return charged, bool(charges) or not filled


def order_average(order: dict[str, Any], filled: Decimal) -> Decimal | None:
    """The average fill price: the exact cost over the filled amount where ccxt has the cost."""
    if filled <= ZERO:
        return None
    cost = decimal(order.get("cost"))
    return cost / filled if cost else decimal(order.get("average"))


def order_fills(order: dict[str, Any], symbol: str) -> tuple[Fill, ...]:
    """The executions ccxt parsed with the order (binance's fills); Kraken lists trade ids only.
    A fill's fee is its fee in the quote currency (zero when charged in another asset: the
    order's charges say what it was)."""
    _, quote = split_symbol(symbol)
    fills = []
    for trade in order.get("trades") or []:
        price, amount = decimal(trade.get("price")), decimal(trade.get("amount"))
        if price is None or amount is None:
            continue
        fee = charge(trade.get("fee"), quote)
        fills.append(Fill(price, amount, fee.amount if fee is not None and fee.asset == quote else ZERO))
    return tuple(fills)


def scrubbed(raw: Any, secrets: tuple[str, ...]) -> Any:
    """A copy of a venue's answer with every secret removed from its strings."""
    if isinstance(raw, dict):
        return {key: scrubbed(value, secrets) for key, value in raw.items()}
    if isinstance(raw, list):
        return [scrubbed(value, secrets) for value in raw]
    return redact(raw, secrets) if isinstance(raw, str) else raw


class CcxtGateway(QuotesOnly):
    """One venue through ccxt. Markets load at most once per gateway, and at most once an hour
    per process and API root. With `credentials` (api key, secret) and an order dialect for
    `ccxt_id`, capabilities include "orders". `rate_limited=False` drops ccxt's pacing (Kraken's
    private calls wait three seconds each), only for a venue without limits such as the local
    emulator. A `pacer` paces the calls in turn with every other client of the same key, in any
    process, by ccxt's costs, instead of within this client alone."""

    orders_refusal = "the ccxt gateway does not support orders without API credentials"

    def __init__(
        self,
        name: str,
        ccxt_id: str,
        *,
        api_url: str = "",
        timeout_ms: int | None = None,
        credentials: tuple[str, str] | None = None,
        rate_limited: bool = True,
        pacer: SharedPacer | None = None,
    ) -> None:
        self.name = name
        self._markets_key = (ccxt_id, api_url)
        self._secrets: tuple[str, ...] = tuple(credentials or ())
        self._dialect = ORDER_DIALECTS.get(ccxt_id) if credentials is not None else None
        self._venue_ids: dict[str, str] = {}  # client order id -> the venue's, for orders placed here
        if self._dialect is not None:
            self.capabilities = frozenset({"books", "orders"})
        elif credentials is not None:
            self.orders_refusal = f"no order dialect for ccxt exchange {ccxt_id!r}"
        timeout = timeout_ms or settings.COLLECT_TIMEOUT_MS
        self._exchange = open_exchange(ccxt_id, api_url, timeout, credentials, rate_limited=rate_limited)
        self._pacer = pacer
        if pacer is not None:
            self._exchange.throttle = functools.partial(pacer.wait, self._exchange.rateLimit)

    def __repr__(self) -> str:
        return f"CcxtGateway({self.name!r}, capabilities={sorted(self.capabilities)})"

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except ccxt.BaseError as exc:
            # `from None`: ccxt's own exception may quote a signed request; ours is redacted.
            raise translate_error(self.name, exc, self._secrets) from None
        except binascii.Error:
            # Kraken signs with the base64-decoded secret; say so without quoting it.
            raise VenueError(f"{self.name}: the API secret is not valid base64") from None

    def _orders(self) -> OrderDialect:
        if self._dialect is None:
            raise self._refuse()
        return self._dialect

    async def _load_markets(self) -> None:
        await load_markets(self._exchange, self._markets_key, self.name)

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        """The top `depth` levels. Raises QuoteRejected for a book that must not be used, and
        TemporaryVenueError / VenueError when the venue fails."""
        with self._translated_errors():
            await self._load_markets()
            book = await self._exchange.fetch_order_book(symbol, depth)
        return parse_quote(book_payload(self.name, symbol, book, depth))

    async def market_rules(self, symbol: str) -> MarketRules:
        """The venue's amount step, minimum amount, minimum cost and price tick for `symbol`, from
        ccxt's market data. Raises VenueError for an unlisted symbol."""
        with self._translated_errors():
            await self._load_markets()
            market = self._exchange.market(symbol)
        limits = market.get("limits") or {}
        return MarketRules(
            amount_step=decimal(market["precision"]["amount"]) or MarketRules().amount_step,
            min_amount=decimal((limits.get("amount") or {}).get("min")) or ZERO,
            min_cost=decimal((limits.get("cost") or {}).get("min")) or ZERO,
            price_tick=decimal(market["precision"].get("price")),
        )

    async def taker_fee(self, symbol: str) -> Decimal:
        """The account's taker fee rate on `symbol` (a fraction of notional) as the venue states
        it now: the fee tier its trading volume has reached (trading.accounts records it on the
        venue's row, so trades never wait for this read). Raises VenueError when the venue does
        not say."""
        self._orders()
        with self._translated_errors():
            await self._load_markets()
            fee = await self._exchange.fetch_trading_fee(symbol)
        taker = decimal(fee.get("taker"))
        if taker is None or taker < ZERO:
            raise VenueError(f"{self.name}: no taker fee for {symbol} in the venue's answer")
        return taker

    async def create_order(self, request: OrderRequest) -> OrderResult:
        """Send an immediate-or-cancel limit order at request.price under request.client_order_id
        and return its outcome (read back by client id when the venue's answer lacks the fill).
        Raises InsufficientBalance, OrderRejected (also for a client id already used),
        TemporaryVenueError (the order may or may not exist: find it with fetch_order) or
        VenueError."""
        dialect = self._orders()
        with self._translated_errors():
            await self._load_markets()
            self._check_precision(request)
            order = await self._exchange.create_order(
                request.symbol,
                "limit",
                request.side.value,
                plain(request.amount, trim=False),
                plain(request.price, trim=False),
                dialect.create_params(request.client_order_id),
            )
            if order.get("id"):
                self._venue_ids[request.client_order_id] = str(order["id"])
            if order.get("status") is None or order.get("filled") is None:
                order = await self._find(request.client_order_id, request.symbol)
            order = await self._with_trades(order, request.symbol)
        return self._result(order, request.client_order_id, request.symbol)

    def _check_precision(self, request: OrderRequest) -> None:
        """Refuse an amount off the venue's step or a price off its tick: ccxt would silently
        truncate the amount, and round the price, possibly past the limit."""
        amount = Decimal(
            self._exchange.amount_to_precision(request.symbol, plain(request.amount, trim=False))
        )
        price = Decimal(self._exchange.price_to_precision(request.symbol, plain(request.price, trim=False)))
        if amount != request.amount or price != request.price:
            raise OrderRejected(
                f"{self.name}: {request.client_order_id} amount {request.amount} or price {request.price} "
                f"is off the market's precision ({amount} at {price})"
            )

    async def _find(self, client_order_id: str, symbol: str) -> dict[str, Any]:
        """ccxt's order under our client order id: by the venue's own id when this gateway placed
        it (one call on any venue), else by the dialect's search."""
        venue_id = self._venue_ids.get(client_order_id)
        if venue_id is not None:
            order: dict[str, Any] = await self._exchange.fetch_order(venue_id, symbol)
            if str(order.get("id")) == venue_id:
                return order
        return await self._orders().find(self._exchange, client_order_id, symbol)

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult:
        """The order sent under `client_order_id`. Raises OrderNotFound when the venue has none
        (it never arrived), TemporaryVenueError or VenueError."""
        self._orders()
        with self._translated_errors():
            await self._load_markets()
            order = await self._with_trades(await self._find(client_order_id, symbol), symbol)
        return self._result(order, client_order_id, symbol)

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderResult:
        """Cancel the order if it is still open, then return its state as the venue reports it
        afterwards: a venue that matched before the cancel arrived shows it filled. Raises
        OrderNotFound when the venue has no such order."""
        dialect = self._orders()
        with self._translated_errors():
            await self._load_markets()
            try:
                await self._exchange.cancel_order(None, symbol, dialect.cancel_params(client_order_id))
            except ccxt.OrderNotFound:
                # Already closed (filled or expired) or never placed: the fetch below tells which.
                log.info("%s: cancel of %s found no open order", self.name, client_order_id)
            order = await self._with_trades(await self._find(client_order_id, symbol), symbol)
        return self._result(order, client_order_id, symbol)

    async def _with_trades(self, order: dict[str, Any], symbol: str) -> dict[str, Any]:
        """`order` with its executions from my-trades when it filled some and ccxt's order states
        neither them nor its fee (a fetched binance order; kraken's orders carry their fee)."""
        if not decimal(order.get("filled")) or order.get("trades") or stated_fees(order):
            return order
        order_id = str(order.get("id"))
        trades = await self._exchange.fetch_my_trades(
            symbol, None, None, self._orders().trades_params(order_id)
        )
        return {**order, "trades": [trade for trade in trades if str(trade.get("order")) == order_id]}

    async def fetch_balance(self) -> dict[str, Decimal]:
        """Free balance per asset."""
        self._orders()
        with self._translated_errors():
            await self._load_markets()
            balance = await self._exchange.fetch_balance()
        free = balance.get("free") or {}
        return {asset: amount for asset, value in free.items() if (amount := decimal(value)) is not None}

    def _result(self, order: dict[str, Any], client_order_id: str, symbol: str) -> OrderResult:
        amount = decimal(order.get("amount")) or ZERO
        filled = decimal(order.get("filled")) or ZERO
        charges, stated = order_charges(order, symbol)
        return OrderResult(
            client_order_id=client_order_id,
            venue_order_id=str(order.get("id") or ""),
            status=order_status(order.get("status"), amount, filled),
            amount=amount,
            filled=filled,
            average_price=order_average(order, filled),
            cost=decimal(order.get("cost")) if filled else None,
            charges=charges,
            fee_stated=stated,
            fills=order_fills(order, symbol),
            raw=scrubbed(order.get("info") or {}, self._secrets),
        )

    async def close(self) -> None:
        try:
            with self._translated_errors():
                await self._exchange.close()
        finally:
            if self._pacer is not None:
                await self._pacer.close()
