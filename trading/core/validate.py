"""Turning untrusted quote payloads into Quotes, or a named rejection."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from trading.core.types import ZERO, Level, Quote, split_symbol

MAX_LEVELS = 50
REQUIRED = ("venue", "symbol", "seq", "received_ts", "bids", "asks")
# No market quotes beyond these. Refusing them bounds the work junk can cause and keeps the money
# arithmetic far from Decimal's overflow.
MAX_TEXT = 32
MIN_EXPONENT, MAX_EXPONENT = -18, 18


class QuoteRejected(ValueError):
    """A payload that must not reach a decision. `reason` is a short stable name for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _ShortRepr(reprlib.Repr):
    """reprlib's shortening, and no failure on ints too long for str() to spell out."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:
            return f"<int of {Decimal(x).adjusted() + 1} digits>"
        return super().repr_int(x, level)


_SHORT_REPR = _ShortRepr()


def _shown(raw: Any) -> str:
    """`raw` for a rejection's detail, shortened: junk can be arbitrarily large."""
    return _SHORT_REPR.repr(raw)


def _number(raw: Any, what: str) -> Decimal:
    """`raw` as a Decimal when it is a string, int or float that spells a number."""
    try:
        if isinstance(raw, str) and len(raw) <= MAX_TEXT:
            return Decimal(raw)
        if isinstance(raw, float):
            return Decimal(str(raw))  # the shortest repr, not the binary expansion
        if isinstance(raw, int) and not isinstance(raw, bool):
            return Decimal(raw)  # directly: str() refuses very long ints
    except InvalidOperation:
        raise QuoteRejected("malformed", f"{what} is not a number: {_shown(raw)}") from None
    raise QuoteRejected(
        "malformed", f"{what} must be a number of at most {MAX_TEXT} characters, got {_shown(raw)}"
    )


def _decimal(raw: Any, what: str) -> Decimal:
    value = _number(raw, what)
    if not value.is_finite():
        raise QuoteRejected("not_finite", f"{what} is {_shown(raw)}")
    if value <= ZERO:
        raise QuoteRejected("non_positive", f"{what} must be positive, got {_shown(raw)}")
    if not MIN_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise QuoteRejected("malformed", f"{what} is out of range: {_shown(raw)}")
    return value


def _levels(raw: Any, side: str) -> tuple[Level, ...]:
    if not isinstance(raw, list) or not raw:
        raise QuoteRejected("malformed", f"{side} must be a non-empty list of [price, amount]")
    levels: list[Level] = []
    for entry in raw[:MAX_LEVELS]:
        if not isinstance(entry, (list, tuple)) or len(entry) < 2:
            raise QuoteRejected("malformed", f"{side} level must be [price, amount], got {_shown(entry)}")
        levels.append((_decimal(entry[0], f"{side} price"), _decimal(entry[1], f"{side} amount")))
    return tuple(levels)


def _count(raw: Any, name: str) -> int:
    """A sequence number or millisecond timestamp: a non-negative int (JSON has no other)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise QuoteRejected("malformed", f"{name} must be a non-negative integer, got {_shown(raw)}")
    return raw


def _is_sorted(levels: tuple[Level, ...], descending: bool) -> bool:
    prices = [price for price, _ in levels]
    return prices == sorted(prices, reverse=descending)


def _venue(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise QuoteRejected("malformed", f"venue must be a name, got {_shown(raw)}")
    return raw


def _symbol(raw: Any) -> str:
    if not isinstance(raw, str):
        raise QuoteRejected("malformed", f"symbol must be a string, got {_shown(raw)}")
    try:
        split_symbol(raw)
    except ValueError as exc:
        raise QuoteRejected("malformed", str(exc)) from None
    return raw


def parse_quote(payload: Any) -> Quote:
    """Build a Quote from a decoded message.

    Expects keys venue, symbol, seq, received_ts, bids, asks (venue_ts optional); levels are
    [price, amount] with positive prices and amounts as strings or numbers, at most MAX_LEVELS
    per side kept. Raises QuoteRejected, and nothing else, naming what is wrong: missing_field,
    malformed, not_finite, non_positive, unsorted or crossed.
    """
    if not isinstance(payload, Mapping):
        raise QuoteRejected("malformed", "a quote must be a JSON object")
    for name in REQUIRED:
        if payload.get(name) is None:
            raise QuoteRejected("missing_field", f"{name} is required")
    venue, symbol = _venue(payload["venue"]), _symbol(payload["symbol"])
    seq, received_ts = _count(payload["seq"], "seq"), _count(payload["received_ts"], "received_ts")
    venue_ts = None if payload.get("venue_ts") is None else _count(payload["venue_ts"], "venue_ts")
    bids, asks = _levels(payload["bids"], "bids"), _levels(payload["asks"], "asks")
    if not _is_sorted(bids, descending=True) or not _is_sorted(asks, descending=False):
        raise QuoteRejected("unsorted", "bids must fall and asks must rise from the best level")
    if bids[0][0] >= asks[0][0]:
        raise QuoteRejected("crossed", f"best bid {bids[0][0]} is not below best ask {asks[0][0]}")
    return Quote(
        venue=venue,
        symbol=symbol,
        bids=bids,
        asks=asks,
        received_ts=received_ts,
        seq=seq,
        venue_ts=venue_ts,
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
