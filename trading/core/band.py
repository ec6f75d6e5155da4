"""The price band: a book whose mid strays too far from the market is not traded on.

Each venue's level on a symbol is the median mid of its last few books received within the window
(refused ones included, so that a real move is followed after a few books instead of blinding the
venue for good). The market is the median of every venue's level, the venue's own included: one
venue that goes astray is outvoted by the others, a venue alone on a symbol is judged by its own
recent books, and a venue's first book with nothing to compare it to is taken. Two venues that
disagree by more than the band are both refused until they agree again: nothing says which one
is right, and refusing trades nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from trading.core.types import BPS, Quote

BAND_REASON = "price_band"
TWO = Decimal(2)


@dataclass(frozen=True, slots=True)
class PriceBand:
    """`max_bps`: the furthest a mid may stray from the market (0: no band); `window_ms`: how
    recent a book must be to count; `history`: how many of a venue's last books make its level."""

    max_bps: Decimal
    window_ms: int = 10_000
    history: int = 5


@dataclass(frozen=True, slots=True)
class Seen:
    """One book's mid, and when it was received."""

    mid: Decimal
    received_ts: int


@dataclass(frozen=True, slots=True)
class Breach:
    """A book outside the band: its mid, the market it was judged against, how far off (bps)."""

    mid: Decimal
    reference: Decimal
    departure_bps: Decimal

    def describe(self) -> str:
        return f"mid {self.mid} is {self.departure_bps:.0f} bps from the market {self.reference}"


def mid(quote: Quote) -> Decimal:
    return (quote.best_bid + quote.best_ask) / TWO


def seen(quote: Quote) -> Seen:
    return Seen(mid(quote), quote.received_ts)


def median(values: Sequence[Decimal]) -> Decimal:
    """The median of a non-empty sequence (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / TWO


def level(recent: Iterable[Seen], band: PriceBand, now_ms: int) -> Decimal | None:
    """A venue's level: the median of its last `history` mids received within the window (oldest
    first in `recent`), or None when it has none."""
    mids = [entry.mid for entry in recent if now_ms - entry.received_ts <= band.window_ms]
    kept = mids[-band.history :] if band.history > 0 else []
    return median(kept) if kept else None


def market(levels: Iterable[Decimal | None]) -> Decimal | None:
    """The median of the venues' levels (those that have one), or None."""
    known = [value for value in levels if value is not None]
    return median(known) if known else None


def judge(quote: Quote, reference: Decimal | None, band: PriceBand) -> Breach | None:
    """The breach if `quote`'s mid departs from `reference` by more than the band allows."""
    if reference is None or band.max_bps <= 0:
        return None
    value = mid(quote)
    departure = abs(value - reference) * BPS / reference
    return Breach(value, reference, departure) if departure > band.max_bps else None
