"""The price band: a book whose mid strays too far from the market is not traded on.

The market is the median mid of the other venues' fresh books of the symbol; a venue alone on a
symbol is judged against the median of its own recent books (refused ones included, so that a real
move is followed after a few books instead of blinding the venue for good). A venue's first book
with nobody to compare it to is taken.
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
    """`max_bps`: the furthest a mid may stray from the reference (0: no band); `window_ms`: how
    recent another venue's book must be to count; `history`: how many of a venue's own recent mids
    judge it when it is alone."""

    max_bps: Decimal
    window_ms: int = 10_000
    history: int = 5


@dataclass(frozen=True, slots=True)
class Breach:
    """A book outside the band: its mid, the reference it was judged against, how far off (bps)."""

    mid: Decimal
    reference: Decimal
    departure_bps: Decimal

    def describe(self) -> str:
        return f"mid {self.mid} is {self.departure_bps:.0f} bps from the reference {self.reference}"


def mid(quote: Quote) -> Decimal:
    return (quote.best_bid + quote.best_ask) / TWO


def median(values: Sequence[Decimal]) -> Decimal:
    """The median of a non-empty sequence (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / TWO


def reference_mid(
    quote: Quote, peers: Iterable[Quote], own_recent: Iterable[Decimal], band: PriceBand, now_ms: int
) -> Decimal | None:
    """What `quote` is judged against: the median mid of the other venues' books received within
    the window, else the median of the venue's own recent mids (oldest first), else None."""
    fresh = [
        mid(peer)
        for peer in peers
        if peer.venue != quote.venue
        and peer.symbol == quote.symbol
        and now_ms - peer.received_ts <= band.window_ms
    ]
    if fresh:
        return median(fresh)
    recent = list(own_recent)[-band.history :] if band.history > 0 else []
    return median(recent) if recent else None


def judge(quote: Quote, reference: Decimal | None, band: PriceBand) -> Breach | None:
    """The breach if `quote`'s mid departs from `reference` by more than the band allows."""
    if reference is None or band.max_bps <= 0:
        return None
    value = mid(quote)
    departure = abs(value - reference) * BPS / reference
    return Breach(value, reference, departure) if departure > band.max_bps else None
