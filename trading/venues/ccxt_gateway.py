"""The ccxt gateway: any exchange ccxt knows, read through its async client.

ccxt's errors stop here: every one is translated into a trading.venues.base error. This gateway
reads books only; placing orders through ccxt comes with the emulator's private endpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support as ccxt
from django.conf import settings

from trading.config import now_ms
from trading.core.types import Quote
from trading.core.validate import parse_quote
from trading.venues.base import (
    InsufficientBalance,
    OrderRejected,
    QuotesOnly,
    TemporaryVenueError,
    VenueError,
)

log = logging.getLogger(__name__)

# Per-exchange client options. Binance would otherwise also load its futures markets (from other
# hosts) and ask a signed endpoint for currencies.
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
}

# Checked in order, most specific first. ccxt's OperationFailed is its branch of errors that may
# pass on a retry: network trouble, timeouts, rate limits, unavailability, garbled answers.
ERROR_TRANSLATIONS: tuple[tuple[type[Exception], type[VenueError]], ...] = (
    (ccxt.InsufficientFunds, InsufficientBalance),
    (ccxt.InvalidOrder, OrderRejected),
    (ccxt.OperationFailed, TemporaryVenueError),
    (ccxt.BaseError, VenueError),
)

MARKETS_TTL_S = 3600.0
# Markets per (ccxt id, API root), shared by the gateways of one process: a collection round
# builds a fresh gateway, and reloading markets every round would spend the venue's rate limit on
# data that changes a few times a year.
_markets: dict[tuple[str, str], tuple[float, dict[str, Any], dict[str, Any]]] = {}


def translate_error(venue: str, exc: Exception) -> VenueError:
    """Our named error for a ccxt exception, its message naming ccxt's class for the record."""
    ours = next(cls for ccxt_cls, cls in ERROR_TRANSLATIONS if isinstance(exc, ccxt_cls))
    return ours(f"{venue}: {type(exc).__name__}: {exc}")


def rewrite_api_urls(urls: Any, root: str) -> Any:
    """Every URL in ccxt's `urls["api"]` (a str or nested dicts of them) moved under `root`:
    https://api.binance.com/api/v3 under http://127.0.0.1:8000/binance becomes
    http://127.0.0.1:8000/binance/api/v3."""
    if isinstance(urls, dict):
        return {key: rewrite_api_urls(value, root) for key, value in urls.items()}
    if not isinstance(urls, str):
        return urls
    base, original = urlsplit(root), urlsplit(urls)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, ""))


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


def open_exchange(ccxt_id: str, api_url: str, timeout_ms: int) -> Any:
    """A ccxt async client with rate limiting on, its API pointed at `api_url` when given."""
    if ccxt_id not in ccxt.exchanges:
        raise VenueError(f"ccxt knows no exchange {ccxt_id!r}")
    exchange = getattr(ccxt, ccxt_id)(
        {"enableRateLimit": True, "timeout": timeout_ms, "options": EXCHANGE_OPTIONS.get(ccxt_id, {})}
    )
    if api_url:
        exchange.urls = {**exchange.urls, "api": rewrite_api_urls(exchange.urls["api"], api_url)}
    _overloads_are_temporary(exchange)
    return exchange


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


class CcxtGateway(QuotesOnly):
    """One venue through ccxt. Markets load at most once per gateway, and at most once an hour
    per process and API root."""

    orders_refusal = "the ccxt gateway does not support orders yet"

    def __init__(self, name: str, ccxt_id: str, *, api_url: str = "", timeout_ms: int | None = None) -> None:
        self.name = name
        self._markets_key = (ccxt_id, api_url)
        self._exchange = open_exchange(ccxt_id, api_url, timeout_ms or settings.COLLECT_TIMEOUT_MS)

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except ccxt.BaseError as exc:
            raise translate_error(self.name, exc) from exc

    async def _load_markets(self) -> None:
        if self._exchange.markets:
            return
        cached = _markets.get(self._markets_key)
        if cached is not None and time.monotonic() - cached[0] < MARKETS_TTL_S:
            self._exchange.set_markets(cached[1], cached[2])
            return
        await self._exchange.load_markets()
        _markets[self._markets_key] = (time.monotonic(), self._exchange.markets, self._exchange.currencies)
        log.info("%s: loaded %d markets", self.name, len(self._exchange.markets))

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        """The top `depth` levels. Raises QuoteRejected for a book that must not be used, and
        TemporaryVenueError / VenueError when the venue fails."""
        with self._translated_errors():
            await self._load_markets()
            book = await self._exchange.fetch_order_book(symbol, depth)
        return parse_quote(book_payload(self.name, symbol, book, depth))

    async def close(self) -> None:
        with self._translated_errors():
            await self._exchange.close()
