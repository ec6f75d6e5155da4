"""The vectorized pass over a chunk: where each venue's book stands at every row, and the rows at
which some venue's ask is at or below another venue's bid, the only moments a decision can differ
from "nothing to do".

The scan compares floats and keeps ties (`<=`), so it can only find too many rows, never too few:
each row it finds is then decided exactly, in Decimal, by the core.
"""

from __future__ import annotations

from itertools import permutations

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
    that row, or -1 when the venue has not quoted in this chunk yet."""
    rows = np.arange(len(chunk), dtype=np.int64)
    latest = np.full((len(chunk.venues), len(chunk)), -1, dtype=np.int64)
    for index in range(len(chunk.venues)):
        np.maximum.accumulate(np.where(chunk.venue == index, rows, -1), out=latest[index])
    return latest


def book_prices(column: Floats, latest: Ints, carried: Floats) -> Floats:
    """`column` (bid or ask) of each venue's latest book at every row; the venue's price from before
    the chunk (`carried`, NaN for none) where it has not quoted in the chunk yet."""
    prices = column[np.maximum(latest, 0)]
    return np.where(latest >= 0, prices, carried[:, None])


def crossing_rows(bids: Floats, asks: Floats) -> npt.NDArray[np.bool_]:
    """Rows at which some venue's ask is at or below a different venue's bid (NaN never crosses)."""
    crossed = np.zeros(bids.shape[1], dtype=np.bool_)
    for buy, sell in permutations(range(bids.shape[0]), 2):
        crossed |= asks[buy] <= bids[sell]
    return crossed


def rows_to_decide(crossed: npt.NDArray[np.bool_], crossed_before: bool) -> Ints:
    """The crossing rows and the first row after each run of them: there the crossings the run
    left open are closed. Every other row leaves the replay exactly as it was."""
    after = np.empty_like(crossed)
    after[0] = crossed_before
    after[1:] = crossed[:-1]
    return np.flatnonzero(crossed | after).astype(np.int64)


def widest_gap_by_minute(ts: Ints, bids: Floats, asks: Floats) -> tuple[Ints, Floats]:
    """Per minute of quotes (stamped with the minute's first quote, epoch ms): the widest
    cross-venue gap seen, best bid of one venue minus best ask of another (negative while no
    books cross)."""
    gap = np.full(bids.shape[1], -np.inf)
    for buy, sell in permutations(range(bids.shape[0]), 2):
        np.fmax(gap, bids[sell] - asks[buy], out=gap)
    minutes = ts // MINUTE_MS
    starts = np.flatnonzero(np.r_[True, minutes[1:] != minutes[:-1]])
    widest = np.maximum.reduceat(gap, starts)
    keep = np.isfinite(widest)
    return ts[starts][keep], widest[keep]
