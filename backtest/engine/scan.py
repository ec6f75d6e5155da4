"""The vectorized pass over a chunk: where each venue's book stands at every row, and the rows at
which some venue's ask is at or below another venue's bid, the only moments a decision can differ
from "nothing to do".

The scan compares floats and keeps ties (`<=`), so it can only find too many rows, never too few:
each row it finds is then decided exactly, in Decimal, by the core.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from backtest.engine.arrays import QuoteArrays

MINUTE_MS = 60_000
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def moment_ends(ts: Ints) -> Ints:
    """The last row of each run of rows received at the same moment (`ts` non-decreasing)."""
    return np.flatnonzero(np.r_[ts[1:] != ts[:-1], True]).astype(np.int64)


def latest_rows(chunk: QuoteArrays) -> Ints:
    """For each venue (axis 0) and row (axis 1): the chunk row holding the venue's latest book at
    that row, or a negative number when the venue has not quoted in this chunk yet (venue index
    less the number of venues: where `book_prices` keeps the price carried into the chunk)."""
    count = len(chunk.venues)
    latest = np.empty((count, len(chunk)), dtype=np.int64)
    for index in range(count):
        quoted = chunk.venue == index
        # The k-th row of the venue, at every row where it has quoted k times so far.
        rows = np.concatenate(([index - count], np.flatnonzero(quoted)))
        np.take(rows, np.cumsum(quoted), out=latest[index])
    return latest


def book_prices(column: Floats, latest: Ints, carried: Floats) -> Floats:
    """`column` (bid or ask) of each venue's latest book at every row; the venue's price from before
    the chunk (`carried`, NaN for none) where it has not quoted in the chunk yet."""
    return np.take(np.concatenate((column, carried)), latest)


def best_other_bids(bids: Floats) -> Floats:
    """For each venue (axis 0) and row: the best bid of the other venues, NaN where none of them
    has a book."""
    other = np.empty_like(bids)
    best = np.full(bids.shape[1], np.nan)
    for index in range(len(bids)):  # the venues before each one
        other[index] = best
        np.fmax(best, bids[index], out=best)
    best.fill(np.nan)
    for index in reversed(range(len(bids))):  # and those after it
        np.fmax(other[index], best, out=other[index])
        np.fmax(best, bids[index], out=best)
    return other


def crossing_rows(asks: Floats, other_bids: Floats) -> npt.NDArray[np.bool_]:
    """Rows at which some venue's ask is at or below a different venue's bid (`best_other_bids`;
    NaN never crosses)."""
    crossed = np.zeros(asks.shape[1], dtype=np.bool_)
    for ask, bid in zip(asks, other_bids, strict=True):
        crossed |= ask <= bid
    return crossed


def rows_to_decide(crossed: npt.NDArray[np.bool_], crossed_before: bool) -> Ints:
    """The crossing rows and the first row after each run of them: there the crossings the run
    left open are closed. Every other row leaves the replay exactly as it was."""
    after = np.empty_like(crossed)
    after[0] = crossed_before
    after[1:] = crossed[:-1]
    return np.flatnonzero(crossed | after).astype(np.int64)


def widest_gaps(asks: Floats, other_bids: Floats) -> Floats:
    """At each row: the widest cross-venue gap, best bid of one venue (`best_other_bids`) minus
    best ask of another, -inf where no two venues have books."""
    gap = np.full(asks.shape[1], -np.inf)
    for ask, bid in zip(asks, other_bids, strict=True):
        np.fmax(gap, bid - ask, out=gap)
    return gap


def widest_gap_by_minute(ts: Ints, gap: Floats) -> tuple[Ints, Floats]:
    """Per minute of quotes (stamped with the minute's first quote, epoch ms): the widest gap of
    its rows (`widest_gaps`; negative while no books cross), minutes without one left out."""
    minutes = ts // MINUTE_MS
    starts = np.flatnonzero(np.r_[True, minutes[1:] != minutes[:-1]])
    widest = np.maximum.reduceat(gap, starts)
    keep = np.isfinite(widest)
    return ts[starts][keep], widest[keep]
