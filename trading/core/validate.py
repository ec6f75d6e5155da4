"""Turning untrusted quote payloads into Quotes, or a named rejection.

The message's shape and types are checked by one strict msgspec schema, in C: it is the listener's
hot path. What a schema cannot say (finite, positive, in range, sorted, not crossed) is checked
here. Whatever the input (any bytes, any decoded object), the result is a Quote or a
QuoteRejected with a reason from REASONS; no other exception leaves this module.

Strict by design, because one codebase both publishes and reads these messages: a field the
schema does not know is rejected (`unknown_field`), numbers are JSON numbers or plain ASCII
decimal strings (no spaces, underscores, signs other than a leading minus, or non-ASCII digits),
symbols are upper-case `BASE/QUOTE`, and every value that passes fits the quote table's columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

import msgspec

from trading.core.types import ZERO, Level, Quote, StaleMark

MAX_LEVELS = 50
# Bounds the work junk can cause: nothing bigger is a quote.
MAX_MESSAGE_BYTES = 64 * 1024
# No market quotes beyond these. They are also what the quote table stores exactly (numeric(28, 12):
# twelve decimal places, sixteen integer digits), so every valid quote can be kept as it came.
MIN_EXPONENT, MAX_EXPONENT = -12, 15
_LOWEST, _BEYOND = Decimal(f"1e{MIN_EXPONENT}"), Decimal(f"1e{MAX_EXPONENT + 1}")
MAX_SEQ: Final = 2**63 - 1  # a signed 64-bit column
MAX_EPOCH_MS: Final = 253_402_300_799_999  # the last millisecond of the year 9999
MAX_SYMBOL_LENGTH = 20
MAX_VENUE_LENGTH = 40
MAX_NUMBER_LENGTH = 64

REASONS: Final = frozenset(
    {
        "bad_json",
        "too_large",
        "missing_field",
        "unknown_field",
        "malformed",
        "not_finite",
        "non_positive",
        "unsorted",
        "crossed",
    }
)

# A plain decimal in ASCII (an optional leading minus, digits, an optional fraction and exponent),
# or a name Decimal reads as not finite, so that those are rejected by their own reason. Checked
# here rather than by the schema: one match over a side's joined text costs a tenth of one per value.
PLAIN_NUMBER = r"-?(?:[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|(?i:s?nan|inf(?:inity)?))"
_PLAIN_NUMBER = re.compile(PLAIN_NUMBER)
_PLAIN_NUMBERS = re.compile(rf"(?:{PLAIN_NUMBER},)*{PLAIN_NUMBER}")
Number = Annotated[str, msgspec.Meta(max_length=MAX_NUMBER_LENGTH)] | int | float
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Stamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)]
Levels = Annotated[list[tuple[Number, Number]], msgspec.Meta(min_length=1)]
VenueName = Annotated[str, msgspec.Meta(pattern=r"\A[-a-zA-Z0-9_]+\Z", max_length=MAX_VENUE_LENGTH)]
SymbolName = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z0-9]+/[A-Z0-9]+\Z", max_length=MAX_SYMBOL_LENGTH)]


class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    """The wire form of a Quote: levels are [price, amount], best first, numbers as strings."""

    venue: VenueName
    symbol: SymbolName
    seq: Count
    received_ts: Stamp
    bids: Levels
    asks: Levels
    venue_ts: Stamp | None = None


_DECODER = msgspec.json.Decoder(_Payload)


class _StalePayload(msgspec.Struct, forbid_unknown_fields=True):
    """The wire form of a StaleMark, on the symbol's price channel like its books."""

    venue: VenueName
    symbol: SymbolName
    stale: Annotated[str, msgspec.Meta(pattern=r"\A[a-z_]+\Z", max_length=20)]  # the event's kind
    at_ms: Stamp


_STALE_DECODER = msgspec.json.Decoder(_StalePayload)


class QuoteRejected(ValueError):
    """A payload that must not reach a decision. `reason` is a short stable name for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_NULL_FIELD = re.compile(r"got `null` - at `\$\.\w+`$")


def _schema_rejection(error: msgspec.ValidationError) -> QuoteRejected:
    """A required field absent or null is missing_field, an extra one unknown_field; anything else
    off-schema is malformed."""
    message = str(error)
    if "missing required field" in message or _NULL_FIELD.search(message) is not None:
        return QuoteRejected("missing_field", message[:200])
    if message.startswith("Object contains unknown field"):
        return QuoteRejected("unknown_field", message[:200])
    return QuoteRejected("malformed", message[:200])


def decode_quote(raw: bytes | str) -> Quote:
    """Decode a JSON price message; `raw` may be anything at all.

    Raises QuoteRejected and nothing else: too_large, bad_json (not UTF-8 JSON text), or
    parse_quote's reasons.
    """
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        raise QuoteRejected("malformed", f"a price message must be bytes or text, not {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise QuoteRejected("too_large", f"a quote message of {len(raw)} bytes is too large")
    try:
        return _quote(_DECODER.decode(raw))
    except msgspec.ValidationError as error:
        raise _schema_rejection(error) from None
    except (msgspec.DecodeError, UnicodeError) as error:
        raise QuoteRejected("bad_json", str(error)[:200]) from None
    except RecursionError:
        raise QuoteRejected("malformed", "nested too deeply") from None


def decode_price_event(raw: bytes | str) -> Quote | StaleMark:
    """Decode anything that comes on a price channel: a book, or a venue's stale mark.

    Raises QuoteRejected and nothing else, with decode_quote's reasons: a message that is
    neither is rejected as the book it is not.
    """
    try:
        return decode_quote(raw)
    except QuoteRejected as rejected:
        if rejected.reason not in {"missing_field", "unknown_field"}:
            raise
        mark = _stale_mark(raw)
        if mark is None:
            raise
        return mark


def _stale_mark(raw: bytes | str) -> StaleMark | None:
    try:
        payload = _STALE_DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError, RecursionError):
        return None
    return StaleMark(venue=payload.venue, symbol=payload.symbol, kind=payload.stale, at_ms=payload.at_ms)


def stale_to_payload(mark: StaleMark) -> dict[str, Any]:
    """A StaleMark's JSON-ready wire form, which decode_price_event reads back."""
    return {"venue": mark.venue, "symbol": mark.symbol, "stale": mark.kind, "at_ms": mark.at_ms}


def parse_quote(payload: Any) -> Quote:
    """Build a Quote from an already decoded message (a mapping).

    Expects keys venue, symbol, seq, received_ts, bids, asks (venue_ts optional) and no others;
    levels are [price, amount] as plain decimal strings, Decimals, ints or floats (a float is read
    by its shortest spelling), positive, best first; at most MAX_LEVELS per side are kept. Raises
    QuoteRejected, and nothing else, naming what is wrong: missing_field, unknown_field, malformed,
    not_finite, non_positive, unsorted or crossed.
    """
    try:
        return _quote(msgspec.convert(_decimals_as_text(payload), _Payload))
    except msgspec.ValidationError as error:
        raise _schema_rejection(error) from None
    except RecursionError:
        raise QuoteRejected("malformed", "nested too deeply") from None


def _decimals_as_text(payload: Any) -> Any:
    """`payload` with Decimal prices and amounts written as text, the one form the schema reads
    them in (a Decimal's str is always a plain number or a not-finite name)."""
    if not isinstance(payload, Mapping):
        return payload
    copy = dict(payload)
    for side in ("bids", "asks"):
        levels = copy.get(side)
        if isinstance(levels, list | tuple):
            copy[side] = [_level_as_text(level) for level in levels]
    return copy


def _level_as_text(level: Any) -> Any:
    if isinstance(level, list | tuple):
        return [str(value) if isinstance(value, Decimal) else value for value in level]
    return level


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


def _levels(levels: Sequence[tuple[Number, Number]], side: str) -> tuple[Level, ...]:
    kept = _decimals(levels[:MAX_LEVELS], side)
    try:
        # Ordering a NaN raises InvalidOperation; infinities fall outside the range.
        if all(_LOWEST <= price < _BEYOND and _LOWEST <= amount < _BEYOND for price, amount in kept):
            return kept
    except InvalidOperation:
        pass
    raise _level_rejection(kept, side)


def _decimals(levels: Sequence[tuple[Number, Number]], side: str) -> tuple[Level, ...]:
    """The levels as Decimals: text and ints exactly, a float by its shortest spelling. Raises
    QuoteRejected("malformed") for text that is not a plain decimal, or beyond Decimal's range."""
    values = [value for level in levels for value in level]
    try:
        all_text = True
        plain = _PLAIN_NUMBERS.fullmatch(",".join(values)) is not None  # type: ignore[arg-type]
    except TypeError:  # some are JSON numbers
        all_text = False
        plain = all(not isinstance(value, str) or _PLAIN_NUMBER.fullmatch(value) for value in values)
    if not plain:
        raise QuoteRejected("malformed", f"a {side} number is not a plain decimal")
    try:
        if all_text:
            return tuple([(Decimal(price), Decimal(amount)) for price, amount in levels])
        return tuple([(_decimal(price), _decimal(amount)) for price, amount in levels])
    except InvalidOperation:
        # Only an exponent beyond what Decimal can hold gets here: the text is a plain number.
        raise QuoteRejected("malformed", f"a {side} number is out of range") from None


def _decimal(value: Number) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


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
