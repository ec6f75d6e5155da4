"""The vectorized pass over a chunk: where each venue's book stands at every row, and the rows at
which some venue's ask is at or below another venue's bid, the only moments a decision can differ
from "nothing to do".

The scan compares floats and keeps ties (`<=`), so it can only find too many rows, never too few:
each row it finds is then decided exactly, in Decimal, by the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from backtest.engine.arrays import QuoteArrays

MINUTE_MS = 60_000
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def moment_ends(ts: Ints) -> Ints:
    """The last row of each run of rows received at the same moment (`ts` non-decreasing)."""
    return np.flatnonzero(np.r_[ts[1:] != ts[:-1], True])


class Scratch:
    """Arrays kept from one chunk's scan to the next. A chunk's arrays of venues by rows run to
    tens of MB, and allocating them afresh for every chunk costs more in page faults than the
    arithmetic on them. What a scan hands out is overwritten by the next scan with the same
    Scratch."""

    def __init__(self) -> None:
        self._kept: dict[str, npt.NDArray[Any]] = {}

    def array(self, name: str, rows: int, length: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A `rows` by `length` array of `dtype`, contents undefined: the one kept as `name`."""
        kept = self._kept.get(name)
        if kept is None or kept.shape[0] != rows or kept.shape[1] < length:
            kept = self._kept[name] = np.empty((rows, length), dtype)
        return kept[:, :length]


@dataclass(frozen=True)
class VenueRows:
    """Where each venue's quotes are in a chunk: `rows[v]` holds venue v's rows, led by -1, and
    `counts[v, r]` how many of them are in rows 0 to r."""

    rows: list[Ints]
    counts: Ints

    def latest(self, venue: int, row: int) -> int:
        """The row of the venue's latest book at `row`, -1 when it has not quoted in the chunk by
        then."""
        return int(self.rows[venue].item(self.counts.item(venue, row)))


@dataclass(frozen=True)
class ChunkScan:
    """What the scan found in a chunk: where each venue's quotes are (`venue_rows`), and at each
    row the widest cross-venue gap (`widest_gaps`) and whether some books cross
    (`crossing_rows`)."""

    venues: VenueRows
    gaps: Floats
    crossing: npt.NDArray[np.bool_]


def scan_chunk(chunk: QuoteArrays, carried_bids: Floats, carried_asks: Floats, scratch: Scratch) -> ChunkScan:
    """The scan of `chunk`, given each venue's best bid and ask carried into it (NaN for none).
    Its arrays live in `scratch` until the next scan."""
    venues = venue_rows(chunk, scratch)
    shape = (len(chunk.venues), len(chunk))
    bids = book_prices(chunk.bid, venues, carried_bids, scratch.array("bids", *shape, np.float64))
    asks = book_prices(chunk.ask, venues, carried_asks, scratch.array("asks", *shape, np.float64))
    other = best_other_bids(bids, scratch)
    return ChunkScan(venues, widest_gaps(asks, other, scratch), crossing_rows(asks, other, scratch))


def venue_rows(chunk: QuoteArrays, scratch: Scratch | None = None) -> VenueRows:
    """Each venue's rows in `chunk`, and how many it has up to each row."""
    scratch = scratch or Scratch()
    counts = scratch.array("counts", len(chunk.venues), len(chunk), np.int64)
    quoted = scratch.array("quoted", 1, len(chunk), np.bool_)[0]
    rows = []
    for index in range(len(chunk.venues)):
        np.equal(chunk.venue, index, out=quoted)
        rows.append(np.concatenate(([-1], np.flatnonzero(quoted))))
        np.cumsum(quoted, out=counts[index])
    return VenueRows(rows, counts)


def book_prices(column: Floats, venues: VenueRows, carried: Floats, out: Floats | None = None) -> Floats:
    """`column` (bid or ask) of each venue's latest book at every row (into `out` when given); the
    venue's price from before the chunk (`carried`, NaN for none) where it has not quoted in the
    chunk yet."""
    prices = np.empty(venues.counts.shape) if out is None else out
    for index, (rows, counts) in enumerate(zip(venues.rows, venues.counts, strict=True)):
        # Each venue's own prices, indexed by how many it has quoted: a small array to gather from.
        own = np.concatenate(([carried[index]], column[rows[1:]]))
        np.take(own, counts, out=prices[index])
    return prices


def best_other_bids(bids: Floats, scratch: Scratch | None = None) -> Floats:
    """For each venue (axis 0) and row: the best bid of the other venues, NaN where none of them
    has a book."""
    scratch = scratch or Scratch()
    venue_count, row_count = bids.shape
    other = scratch.array("other", venue_count, row_count, np.float64)
    other[0].fill(np.nan)
    for index in range(1, len(bids)):  # first the best of the venues before each one
        np.fmax(other[index - 1], bids[index - 1], out=other[index])
    after = scratch.array("after", 1, bids.shape[1], np.float64)[0]
    after.fill(np.nan)
    for index in range(len(bids) - 1, 0, -1):  # then that of the venues after it
        np.fmax(after, bids[index], out=after)
        np.fmax(other[index - 1], after, out=other[index - 1])
    return other


def crossing_rows(asks: Floats, other_bids: Floats, scratch: Scratch | None = None) -> npt.NDArray[np.bool_]:
    """Rows at which some venue's ask is at or below a different venue's bid (`best_other_bids`;
    NaN never crosses)."""
    scratch = scratch or Scratch()
    crossed: npt.NDArray[np.bool_] = scratch.array("crossed", 1, asks.shape[1], np.bool_)[0]
    crosses = scratch.array("crosses", 1, asks.shape[1], np.bool_)[0]
    crossed.fill(False)
    for ask, bid in zip(asks, other_bids, strict=True):
        crossed |= np.less_equal(ask, bid, out=crosses)
    return crossed


def rows_to_decide(crossed: npt.NDArray[np.bool_], crossed_before: bool) -> Ints:
    """The crossing rows and the first row after each run of them: there the crossings the run
    left open are closed. Every other row leaves the replay exactly as it was."""
    after = np.empty_like(crossed)
    after[0] = crossed_before
    after[1:] = crossed[:-1]
    return np.flatnonzero(crossed | after)


def widest_gaps(asks: Floats, other_bids: Floats, scratch: Scratch | None = None) -> Floats:
    """At each row: the widest cross-venue gap, best bid of one venue (`best_other_bids`) minus
    best ask of another, -inf where no two venues have books."""
    scratch = scratch or Scratch()
    gap: Floats = scratch.array("gap", 1, asks.shape[1], np.float64)[0]
    venue_gap = scratch.array("venue_gap", 1, asks.shape[1], np.float64)[0]
    gap.fill(-np.inf)
    for ask, bid in zip(asks, other_bids, strict=True):
        np.fmax(gap, np.subtract(bid, ask, out=venue_gap), out=gap)
    return gap


def widest_gap_by_minute(ts: Ints, gap: Floats) -> tuple[Ints, Floats]:
    """Per minute of quotes (stamped with the minute's first quote, epoch ms): the widest gap of
    its rows (`widest_gaps`; negative while no books cross), minutes without one left out."""
    minutes = ts // MINUTE_MS
    starts = np.flatnonzero(np.r_[True, minutes[1:] != minutes[:-1]])
    widest = np.maximum.reduceat(gap, starts)
    keep = np.isfinite(widest)
    return ts[starts][keep], widest[keep]
