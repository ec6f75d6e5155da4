"""Recorded quotes and settings from the database, as the engine's inputs.

Quotes are read in replay order (received time, then id) through a server-side cursor and handed
on in chunks of columns, so a replay of any length holds one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any

import numpy as np
from django.db.models import FloatField, Max, Min, QuerySet, TextField
from django.db.models.functions import Cast

from backtest.engine.arrays import NO_VENUE_TS, QuoteArrays
from trading.clock import to_ms
from trading.core.types import Fees, StrategyParams, VenueState
from trading.core_inputs import venue_state
from trading.models import Quote as QuoteRow
from trading.models import StrategyConfig, Venue

CHUNK_ROWS = 20_000
# Floats for the scan and the depth as JSON text, parsed only for the rows the strategy looks at.
FIELDS = ("venue_id", "received_at", "venue_ts", "seq")
CASTS = {
    "bid_f": Cast("bid", FloatField()),
    "ask_f": Cast("ask", FloatField()),
    "bid_size_f": Cast("bid_size", FloatField()),
    "ask_size_f": Cast("ask_size", FloatField()),
    "depth_text": Cast("depth", TextField()),
}


@dataclass(frozen=True)
class Slice:
    """Which recorded quotes to replay: one symbol, some venues, received in [start, end)."""

    symbol: str
    venues: tuple[str, ...]
    start: datetime | None = None
    end: datetime | None = None

    def rows(self) -> QuerySet[QuoteRow]:
        rows = QuoteRow.objects.filter(symbol=self.symbol, venue__name__in=self.venues)
        if self.start is not None:
            rows = rows.filter(received_at__gte=self.start)
        if self.end is not None:
            rows = rows.filter(received_at__lt=self.end)
        return rows

    def count(self) -> int:
        return self.rows().count()

    def span(self) -> tuple[datetime | None, datetime | None]:
        """The first and last receive times in the slice (None, None when it is empty)."""
        bounds = self.rows().aggregate(first=Min("received_at"), last=Max("received_at"))
        return bounds["first"], bounds["last"]


def quote_chunks(part: Slice, chunk_rows: int = CHUNK_ROWS) -> Iterator[QuoteArrays]:
    """The slice's quotes in replay order, `chunk_rows` at a time."""
    names = dict(Venue.objects.filter(name__in=part.venues).values_list("pk", "name"))
    index = {pk: part.venues.index(name) for pk, name in names.items()}
    rows = (
        part.rows()
        .order_by("received_at", "pk")
        .annotate(**CASTS)
        .values_list(*FIELDS, *CASTS)
        .iterator(chunk_size=chunk_rows)
    )
    while batch := list(islice(rows, chunk_rows)):
        yield _columns(part, index, batch)


def _columns(part: Slice, index: Mapping[int, int], batch: Sequence[tuple[Any, ...]]) -> QuoteArrays:
    venue_id, received, stamped, seq, bid, ask, bid_size, ask_size, depth = zip(*batch, strict=True)
    return QuoteArrays(
        symbol=part.symbol,
        venues=part.venues,
        ts=np.array([to_ms(moment) for moment in received], dtype=np.int64),
        venue=np.array([index[pk] for pk in venue_id], dtype=np.int8),
        bid=np.array(bid, dtype=np.float64),
        ask=np.array(ask, dtype=np.float64),
        bid_size=np.array(bid_size, dtype=np.float64),
        ask_size=np.array(ask_size, dtype=np.float64),
        venue_ts=np.array([NO_VENUE_TS if ts is None else to_ms(ts) for ts in stamped], dtype=np.int64),
        seq=np.array(seq, dtype=np.int64),
        depth_json=depth,
    )


# --- settings ----------------------------------------------------------------------------------


def base_config() -> StrategyConfig:
    """The active strategy version, or an unsaved one with the model's defaults."""
    return StrategyConfig.objects.filter(active=True).first() or StrategyConfig(symbols=[])


def venue_states(
    config: StrategyConfig,
    names: Sequence[str],
    fees: Mapping[str, Decimal],
    funds: Mapping[str, Mapping[str, Decimal]],
) -> dict[str, VenueState]:
    """The named venues as the strategy sees them, every one up, with taker fees overridden by
    `fees` and starting balances from `funds`. Raises Venue.DoesNotExist for an unknown name."""
    states = {}
    for name in names:
        venue = Venue.objects.get(name=name)
        state = venue_state(venue, config, dict(funds.get(name, {})))
        if name in fees:
            state = replace(state, fees=Fees(taker=fees[name], maker=state.fees.maker))
        states[name] = replace(state, up=True)  # health today says nothing about the past
    return states


def with_overrides(params: StrategyParams, overrides: Mapping[str, str]) -> StrategyParams:
    """`params` with `overrides` (field name to text) applied; raises ValueError for an unknown
    field or a value of the wrong kind."""
    changes: dict[str, Any] = {}
    for name, raw in overrides.items():
        if name not in PARAM_TYPES:
            raise ValueError(f"unknown strategy parameter {name!r}; known: {', '.join(PARAM_TYPES)}")
        try:
            changes[name] = PARAM_TYPES[name](raw)
        except (ValueError, InvalidOperation):
            raise ValueError(f"strategy parameter {name}: not a number: {raw!r}") from None
    return replace(params, **changes)


PARAM_TYPES = {
    "min_profit_bps": Decimal,
    "trade_size": Decimal,
    "max_quote_age_ms": int,
    "ttl_ms": int,
    "slippage_bps": Decimal,
}
