"""Turning untrusted quote payloads into Quotes, or a named rejection.

The message's shape and types are checked by one msgspec schema, in C: it is the listener's hot
path. What a schema cannot say (finite, positive, in range, sorted, not crossed) is checked here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec

from trading.core.types import ZERO, Level, Quote

MAX_LEVELS = 50
# Bounds the work junk can cause: nothing bigger is a quote.
MAX_MESSAGE_BYTES = 64 * 1024
# No market quotes beyond these; refusing them keeps money arithmetic far from Decimal's limits.
MIN_EXPONENT, MAX_EXPONENT = -18, 18
_LOWEST, _BEYOND = Decimal(f"1e{MIN_EXPONENT}"), Decimal(f"1e{MAX_EXPONENT + 1}")

Count = Annotated[int, msgspec.Meta(ge=0)]
Levels = Annotated[list[tuple[Decimal, Decimal]], msgspec.Meta(min_length=1)]


class _Payload(msgspec.Struct):
    """The wire form of a Quote: levels are [price, amount], best first, numbers as strings."""

    venue: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    symbol: Annotated[str, msgspec.Meta(pattern=r"^[^/]+/[^/]+$", max_length=40)]
    seq: Count
    received_ts: Count
    bids: Levels
    asks: Levels
    venue_ts: Count | None = None


_DECODER = msgspec.json.Decoder(_Payload)


class QuoteRejected(ValueError):
    """A payload that must not reach a decision. `reason` is a short stable name for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_NULL_FIELD = re.compile(r"got `null` - at `\$\.\w+`$")


def _schema_rejection(error: msgspec.ValidationError) -> QuoteRejected:
    """A required field absent or null is missing_field; anything else off-schema is malformed."""
    message = str(error)
    missing = "missing required field" in message or _NULL_FIELD.search(message) is not None
    return QuoteRejected("missing_field" if missing else "malformed", message[:200])


def decode_quote(raw: bytes | str) -> Quote:
    """Decode a JSON price message. Raises QuoteRejected: bad_json, or parse_quote's reasons."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise QuoteRejected("malformed", f"a quote message of {len(raw)} bytes is too large")
    try:
        return _quote(_DECODER.decode(raw))
    except msgspec.ValidationError as error:
        raise _schema_rejection(error) from None
    except msgspec.DecodeError as error:
        raise QuoteRejected("bad_json", str(error)[:200]) from None


def parse_quote(payload: Any) -> Quote:
    """Build a Quote from an already decoded message (a mapping).

    Expects keys venue, symbol, seq, received_ts, bids, asks (venue_ts optional); levels are
    [price, amount] as strings or numbers (a float is read by its shortest spelling), positive,
    best first; at most MAX_LEVELS per side are kept. Raises QuoteRejected, and nothing else,
    naming what is wrong: missing_field, malformed, not_finite, non_positive, unsorted or crossed.
    """
    try:
        return _quote(msgspec.convert(payload, _Payload))
    except msgspec.ValidationError as error:
        raise _schema_rejection(error) from None


def _quote(payload: _Payload) -> Quote:
    bids, asks = _levels(payload.bids, "bids"), _levels(payload.asks, "asks")
    if not _is_sorted(bids, descending=True) or not _is_sorted(asks, descending=False):
        raise QuoteRejected("unsorted", "bids must fall and asks must rise from the best level")
    if bids[0][0] >= asks[0][0]:
        raise QuoteRejected("crossed", f"best bid {bids[0][0]} is not below best ask {asks[0][0]}")
    return Quote(
        venue=payload.venue,
        symbol=payload.symbol,
        bids=bids,
        asks=asks,
        received_ts=payload.received_ts,
        seq=payload.seq,
        venue_ts=payload.venue_ts,
    )


def _levels(levels: list[Level], side: str) -> tuple[Level, ...]:
    kept = tuple(levels[:MAX_LEVELS])
    try:
        # Ordering a NaN raises InvalidOperation; infinities fall outside the range.
        if all(_LOWEST <= price < _BEYOND and _LOWEST <= amount < _BEYOND for price, amount in kept):
            return kept
    except InvalidOperation:
        pass
    raise _level_rejection(kept, side)


def _level_rejection(levels: tuple[Level, ...], side: str) -> QuoteRejected:
    """Name the first thing wrong with a side that failed the range check."""
    for price, amount in levels:
        for what, value in ((f"{side} price", price), (f"{side} amount", amount)):
            if not value.is_finite():
                return QuoteRejected("not_finite", f"{what} is {value}")
            if value <= ZERO:
                return QuoteRejected("non_positive", f"{what} must be positive, got {value}")
            if not _LOWEST <= value < _BEYOND:
                return QuoteRejected("malformed", f"{what} is out of range: {value:.3E}")
    return QuoteRejected("malformed", f"{side} failed validation")


def _is_sorted(levels: tuple[Level, ...], descending: bool) -> bool:
    prices = [price for price, _ in levels]
    return prices == sorted(prices, reverse=descending)


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
