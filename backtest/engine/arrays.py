"""Quotes as columns: the engine's input, one chunk at a time.

A chunk holds consecutive quotes of one symbol, in replay order (received time, then arrival order).
Prices and sizes are float columns for scanning; the exact Decimal book of a row is rebuilt only
when the strategy has to look at it, from the row's recorded depth when there is one, else from its
top of book (a float printed with `repr` gives back the decimal it was parsed from).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from trading.core.types import Level, Quote

NO_VENUE_TS = -1  # venue_ts column value for a quote the venue did not stamp

Depth = tuple[tuple[Level, ...], tuple[Level, ...]]  # (bids, asks), best first


@dataclass(frozen=True)
class QuoteArrays:
    """One chunk of quotes. `venue` holds indexes into `venues`, which is the same tuple for every
    chunk of a replay. `depth`, when given, holds each row's exact book; `depth_json` holds it as
    recorded ({"bids": [[price, amount], ...], "asks": [...]}, numbers as strings), parsed on use."""

    symbol: str
    venues: tuple[str, ...]
    ts: npt.NDArray[np.int64]  # received, epoch ms, non-decreasing
    venue: npt.NDArray[np.int8]
    bid: npt.NDArray[np.float64]
    ask: npt.NDArray[np.float64]
    bid_size: npt.NDArray[np.float64]
    ask_size: npt.NDArray[np.float64]
    venue_ts: npt.NDArray[np.int64] | None = None
    seq: npt.NDArray[np.int64] | None = None
    depth: Sequence[Depth] | None = None
    depth_json: Sequence[str] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def quote(self, row: int) -> Quote:
        """The exact book of `row`."""
        bids, asks = self._depth(row)
        venue_ts = None if self.venue_ts is None else self.venue_ts.item(row)
        return Quote(
            venue=self.venues[self.venue.item(row)],
            symbol=self.symbol,
            bids=bids,
            asks=asks,
            received_ts=self.ts.item(row),
            seq=row if self.seq is None else self.seq.item(row),
            venue_ts=None if venue_ts == NO_VENUE_TS else venue_ts,
        )

    def _depth(self, row: int) -> Depth:
        """The row's exact book: given, recorded, else its top of book (for a book recorded
        without depth)."""
        if self.depth is not None:
            return self.depth[row]
        recorded = json.loads(self.depth_json[row]) if self.depth_json is not None else None
        if recorded and recorded.get("bids") and recorded.get("asks"):
            return _levels(recorded["bids"]), _levels(recorded["asks"])
        return self._top(row)

    def _top(self, row: int) -> Depth:
        return (
            ((_exact(self.bid.item(row)), _exact(self.bid_size.item(row))),),
            ((_exact(self.ask.item(row)), _exact(self.ask_size.item(row))),),
        )

    def slice(self, start: int, stop: int) -> QuoteArrays:
        """Rows [start, stop) as a chunk of their own (views, no copies)."""
        part = slice(start, stop)
        return QuoteArrays(
            symbol=self.symbol,
            venues=self.venues,
            ts=self.ts[part],
            venue=self.venue[part],
            bid=self.bid[part],
            ask=self.ask[part],
            bid_size=self.bid_size[part],
            ask_size=self.ask_size[part],
            venue_ts=None if self.venue_ts is None else self.venue_ts[part],
            seq=None if self.seq is None else self.seq[part],
            depth=None if self.depth is None else self.depth[part],
            depth_json=None if self.depth_json is None else self.depth_json[part],
        )

    def then(self, later: QuoteArrays) -> QuoteArrays:
        """This chunk's rows followed by `later`'s, as one chunk (of the same replay)."""

        def joined(mine: npt.NDArray[Any] | None, theirs: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
            return None if mine is None or theirs is None else np.concatenate((mine, theirs))

        def listed(mine: Sequence[Any] | None, theirs: Sequence[Any] | None) -> list[Any] | None:
            return None if mine is None or theirs is None else [*mine, *theirs]

        return QuoteArrays(
            symbol=self.symbol,
            venues=self.venues,
            ts=np.concatenate((self.ts, later.ts)),
            venue=np.concatenate((self.venue, later.venue)),
            bid=np.concatenate((self.bid, later.bid)),
            ask=np.concatenate((self.ask, later.ask)),
            bid_size=np.concatenate((self.bid_size, later.bid_size)),
            ask_size=np.concatenate((self.ask_size, later.ask_size)),
            venue_ts=joined(self.venue_ts, later.venue_ts),
            seq=joined(self.seq, later.seq),
            depth=listed(self.depth, later.depth),
            depth_json=listed(self.depth_json, later.depth_json),
        )

    def chunks(self, size: int) -> list[QuoteArrays]:
        return [self.slice(start, start + size) for start in range(0, len(self), size)]


def _levels(raw: Sequence[Sequence[str]]) -> tuple[Level, ...]:
    return tuple((Decimal(str(price)), Decimal(str(amount))) for price, amount in raw)


def _exact(value: float) -> Decimal:
    return Decimal(repr(value))


def from_quotes(quotes: Sequence[Quote], venues: Sequence[str]) -> QuoteArrays:
    """Columns of `quotes` (one symbol, already in replay order), keeping their exact depth."""
    index = {name: i for i, name in enumerate(venues)}
    return QuoteArrays(
        symbol=quotes[0].symbol,
        venues=tuple(venues),
        ts=np.array([q.received_ts for q in quotes], dtype=np.int64),
        venue=np.array([index[q.venue] for q in quotes], dtype=np.int8),
        bid=np.array([float(q.best_bid) for q in quotes], dtype=np.float64),
        ask=np.array([float(q.best_ask) for q in quotes], dtype=np.float64),
        bid_size=np.array([float(q.bids[0][1]) for q in quotes], dtype=np.float64),
        ask_size=np.array([float(q.asks[0][1]) for q in quotes], dtype=np.float64),
        venue_ts=np.array(
            [NO_VENUE_TS if q.venue_ts is None else q.venue_ts for q in quotes], dtype=np.int64
        ),
        seq=np.array([q.seq for q in quotes], dtype=np.int64),
        depth=[(q.bids, q.asks) for q in quotes],
    )
