"""Turning untrusted quote payloads into Quotes, or a named rejection."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from trading.core.types import ZERO, Level, Quote, split_symbol

MAX_LEVELS = 50


class QuoteRejected(ValueError):
    """A payload that must not reach a decision. `reason` is a short stable name for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _decimal(raw: Any, what: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise QuoteRejected("malformed", f"{what} must be a number, got {raw!r}")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise QuoteRejected("malformed", f"{what} is not a number: {raw!r}") from None
    if not value.is_finite():
        raise QuoteRejected("not_finite", f"{what} is {raw!r}")
    if value <= ZERO:
        raise QuoteRejected("non_positive", f"{what} must be positive, got {raw!r}")
    return value


def _levels(raw: Any, side: str) -> tuple[Level, ...]:
    if not isinstance(raw, list) or not raw:
        raise QuoteRejected("malformed", f"{side} must be a non-empty list of [price, amount]")
    levels: list[Level] = []
    for entry in raw[:MAX_LEVELS]:
        if not isinstance(entry, (list, tuple)) or len(entry) < 2:
            raise QuoteRejected("malformed", f"{side} level must be [price, amount], got {entry!r}")
        levels.append((_decimal(entry[0], f"{side} price"), _decimal(entry[1], f"{side} amount")))
    return tuple(levels)


def _optional_int(payload: Mapping[str, Any], name: str) -> int | None:
    raw = payload.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise QuoteRejected("malformed", f"{name} must be a non-negative integer, got {raw!r}")
    return raw


def _int(payload: Mapping[str, Any], name: str) -> int:
    value = _optional_int(payload, name)
    if value is None:
        raise QuoteRejected("missing_field", f"{name} is required")
    return value


def _is_sorted(levels: tuple[Level, ...], descending: bool) -> bool:
    prices = [price for price, _ in levels]
    return prices == sorted(prices, reverse=descending)


def parse_quote(payload: Any) -> Quote:
    """Build a Quote from a decoded message.

    Expects keys venue, symbol, seq, received_ts, bids, asks (venue_ts optional); levels are
    [price, amount] with prices as strings or numbers. Raises QuoteRejected naming what is wrong:
    missing_field, malformed, not_finite, non_positive, unsorted or crossed.
    """
    if not isinstance(payload, Mapping):
        raise QuoteRejected("malformed", "a quote must be a JSON object")
    for name in ("venue", "symbol", "bids", "asks"):
        if payload.get(name) is None:
            raise QuoteRejected("missing_field", f"{name} is required")
    venue, symbol = payload["venue"], payload["symbol"]
    if not isinstance(venue, str) or not venue:
        raise QuoteRejected("malformed", f"venue must be a name, got {venue!r}")
    try:
        split_symbol(symbol if isinstance(symbol, str) else "")
    except ValueError as exc:
        raise QuoteRejected("malformed", str(exc)) from None
    bids, asks = _levels(payload["bids"], "bids"), _levels(payload["asks"], "asks")
    if not _is_sorted(bids, descending=True) or not _is_sorted(asks, descending=False):
        raise QuoteRejected("unsorted", "bids must fall and asks must rise from the best level")
    if bids[0][0] >= asks[0][0]:
        raise QuoteRejected("crossed", f"best bid {bids[0][0]} is not below best ask {asks[0][0]}")
    seq, received_ts = _int(payload, "seq"), _int(payload, "received_ts")
    return Quote(
        venue=venue,
        symbol=symbol,
        bids=bids,
        asks=asks,
        received_ts=received_ts,
        seq=seq,
        venue_ts=_optional_int(payload, "venue_ts"),
    )


def quote_to_payload(quote: Quote) -> dict[str, Any]:
    """The inverse of parse_quote: a JSON-ready dict with prices and amounts as exact strings."""
    return {
        "venue": quote.venue,
        "symbol": quote.symbol,
        "seq": quote.seq,
        "received_ts": quote.received_ts,
        "venue_ts": quote.venue_ts,
        "bids": [[str(p), str(a)] for p, a in quote.bids],
        "asks": [[str(p), str(a)] for p, a in quote.asks],
    }
