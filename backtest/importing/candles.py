"""OHLCV bars, and the model that turns a bar into a quote.

The candle-to-quote model: a bar opening at t becomes one quote stamped at its close, t + the bar's
length (received and venue time alike), so that nothing the bar reveals (its high, low or close)
is visible before the bar has closed. The quote's bid is close * (1 - h) and its ask close * (1 + h),
where h is the venue's modelled half spread in basis points / 10,000; one level each side, with
a modelled amount at the touch. The bid is rounded down and the ask up to the quote table's 12
decimal places, so the spread is never narrower than modelled. High, low and volume are checked,
never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from backtest.importing.rows import BadRow, decimal, iso, timestamp_ms
from trading.core.types import BPS, Quote
from trading.storage import DECIMAL_PLACES

# The layout that fetch_history writes; the importer reads any header with these names.
CANDLE_HEADER = ("timestamp_utc", "open", "high", "low", "close", "volume")
PRICES = CANDLE_HEADER[1:5]
_PLACE = Decimal(1).scaleb(-DECIMAL_PLACES)


@dataclass(frozen=True, slots=True)
class Candle:
    """One bar: its open time in epoch ms and its prices; volume is 0 for a bar without trades."""

    open_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True, slots=True)
class CandleColumns:
    """Where a file keeps each field, found by name whatever order a venue's export uses."""

    timestamp: int
    open: int
    high: int
    low: int
    close: int
    volume: int | None

    @classmethod
    def from_header(cls, header: list[str]) -> CandleColumns | None:
        """The positions of timestamp_utc, open, high, low, close (and volume if present), or
        None when one of the required columns is missing."""
        names = [name.strip().lower() for name in header]
        if not set(CANDLE_HEADER[:5]).issubset(names):
            return None
        where = names.index
        volume = where("volume") if "volume" in names else None
        return cls(where("timestamp_utc"), where("open"), where("high"), where("low"), where("close"), volume)


@dataclass(frozen=True, slots=True)
class CandleModel:
    """How bars become quotes (see the module docstring): `half_spread_bps` each side of the close,
    `touch_amount` (base currency) at the best bid and ask, bars `bar_ms` long."""

    half_spread_bps: Decimal = Decimal(1)
    touch_amount: Decimal = Decimal(1)
    bar_ms: int = 60_000


def parse_candle(row: list[str], columns: CandleColumns) -> Candle:
    """One bar from a CSV row. Raises BadRow: unparsable (missing or not a number or time),
    non_positive (a price at or below zero), inconsistent_bar (open or close outside low..high)."""
    try:
        fields = [row[i] for i in (columns.timestamp, columns.open, columns.high, columns.low, columns.close)]
        volume_text = "0" if columns.volume is None else row[columns.volume]
    except IndexError:
        raise BadRow("unparsable", f"{len(row)} fields") from None
    stamp, *prices = fields
    opening, high, low, close = (decimal(text, name) for text, name in zip(prices, PRICES, strict=True))
    volume = decimal(volume_text or "0", "volume", zero_ok=True)
    candle = Candle(timestamp_ms(stamp), opening, high, low, close, volume)
    if not low <= min(opening, close) <= max(opening, close) <= high:
        raise BadRow("inconsistent_bar", f"open {opening} or close {close} outside {low}..{high}")
    return candle


def candle_quote(candle: Candle, venue: str, symbol: str, seq: int, model: CandleModel) -> Quote:
    """The quote the model makes of `candle`, stamped at the bar's close (see the module docstring)."""
    half = candle.close * model.half_spread_bps / BPS
    bid = (candle.close - half).quantize(_PLACE, rounding=ROUND_FLOOR)
    ask = (candle.close + half).quantize(_PLACE, rounding=ROUND_CEILING)
    closed_at = candle.open_ms + model.bar_ms
    return Quote(
        venue=venue,
        symbol=symbol,
        bids=((bid, model.touch_amount),),
        asks=((ask, model.touch_amount),),
        received_ts=closed_at,
        seq=seq,
        venue_ts=closed_at,
    )


def candle_line(candle: Candle) -> list[str]:
    """A bar as a CSV row in CANDLE_HEADER order."""
    prices = (candle.open, candle.high, candle.low, candle.close, candle.volume)
    return [iso(candle.open_ms), *(format(value, "f") for value in prices)]
