"""Downloading OHLCV history through ccxt into a CSV.gz file that `import_quotes` reads.

The file's columns are CANDLE_HEADER (timestamp_utc, open, high, low, close, volume). Each page
the venue answers is appended as it arrives, as one complete gzip member in a single write, so an
interrupted download leaves a readable file; run again, the download resumes after the last bar
in the file. Only closed bars are written: the bar still forming when a page is fetched would
otherwise be stored with prices that later change, and resuming would skip its final form.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
from django.conf import settings

from backtest.importing.candles import CANDLE_HEADER, Candle, CandleColumns, candle_line, parse_candle
from backtest.importing.files import UnreadableFile, open_text
from backtest.importing.rows import BadRow, timeframe_ms
from trading.clock import now_ms
from trading.models import Venue
from trading.venues.ccxt_gateway import open_exchange, translate_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryRequest:
    """Bars of `symbol` on `venue` (a Venue row's name, else a ccxt id) opening in [since, until)."""

    venue: str
    symbol: str
    since_ms: int
    until_ms: int | None
    timeframe: str
    out: Path


@dataclass
class HistorySummary:
    """What a download did: where it started (after the file's last bar when resuming) and wrote."""

    start_ms: int
    resumed: bool
    candles: int = 0
    pages: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


Progress = Callable[[HistorySummary], None]


def last_bar_open(out: Path) -> int | None:
    """The latest open time among the file's readable bars; None if the file is missing or has none.
    Raises UnreadableFile when the file is not a candle file."""
    if not out.exists():
        return None
    with open_text(out) as stream:
        reader = csv.reader(stream)
        columns = CandleColumns.from_header(next(reader, []))
        if columns is None:
            raise UnreadableFile(f"{out} exists and is not a candle file; choose another --out")
        latest: int | None = None
        for row in reader:
            try:
                opened = parse_candle(row, columns).open_ms
            except BadRow:
                continue  # the importer reports bad rows; resuming needs only the good ones
            latest = opened if latest is None else max(latest, opened)
    return latest


def page_text(candles: Sequence[Candle], header: bool) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if header:
        writer.writerow(CANDLE_HEADER)
    writer.writerows(candle_line(candle) for candle in candles)
    return text.getvalue()


def append_page(out: Path, candles: Sequence[Candle]) -> None:
    """Append `candles` (with the header, for a new file) in one write: a gzip member for .gz."""
    data = page_text(candles, header=not out.exists() or out.stat().st_size == 0).encode()
    with out.open("ab") as stream:
        stream.write(gzip.compress(data, mtime=0) if out.suffix == ".gz" else data)


def ccxt_candle(raw: Sequence[Any]) -> Candle:
    """ccxt's [ms, open, high, low, close, volume]; its floats read back through their shortest
    spelling, which is the venue's decimal string for up to 15 significant digits."""
    opened, *values = raw
    opening, high, low, close, volume = (Decimal(repr(float(value or 0))) for value in values)
    return Candle(int(opened), opening, high, low, close, volume)


def closed_bars(page: Sequence[Sequence[Any]], start_ms: int, end_ms: int, bar_ms: int) -> list[Candle]:
    """The page's bars that open in [start_ms, end_ms) and have closed by now, oldest first."""
    closed_by = now_ms()
    candles = sorted((ccxt_candle(raw) for raw in page), key=lambda candle: candle.open_ms)
    return [c for c in candles if start_ms <= c.open_ms < end_ms and c.open_ms + bar_ms <= closed_by]


def exchange_address(venue: str) -> tuple[str, str]:
    """(ccxt id, API root) of the Venue row named `venue`; for a venue not in the table, the ccxt
    exchange of that name at its own address."""
    row = Venue.objects.filter(name=venue).first()
    return (row.ccxt_id or row.name, row.api_url) if row else (venue, "")


async def download(
    exchange: Any, request: HistoryRequest, summary: HistorySummary, progress: Progress
) -> None:
    """Fetch and append pages until the venue has no more bars before `until`."""
    bar_ms = timeframe_ms(request.timeframe)
    end_ms = request.until_ms if request.until_ms is not None else now_ms()
    cursor = summary.start_ms
    while cursor < end_ms:
        page = await exchange.fetch_ohlcv(request.symbol, request.timeframe, since=cursor)
        candles = closed_bars(page, cursor, end_ms, bar_ms)
        if not candles:
            break
        append_page(request.out, candles)
        summary.pages += 1
        summary.candles += len(candles)
        if summary.first_ms is None:
            summary.first_ms = candles[0].open_ms
        summary.last_ms = candles[-1].open_ms
        progress(summary)
        cursor = candles[-1].open_ms + bar_ms


async def fetch(
    address: tuple[str, str], request: HistoryRequest, summary: HistorySummary, progress: Progress
) -> None:
    exchange = open_exchange(*address, settings.COLLECT_TIMEOUT_MS)
    try:
        await download(exchange, request, summary, progress)
    except ccxt.BaseError as exc:
        raise translate_error(request.venue, exc) from exc
    finally:
        await exchange.close()


def fetch_history(request: HistoryRequest, progress: Progress) -> HistorySummary:
    """Download the requested bars into `request.out`, resuming after the last bar already there.

    ccxt's own rate limiter spaces the requests. Raises UnreadableFile when `out` is not a candle
    file, ValueError for an unknown timeframe, and a trading.venues.base VenueError when the venue
    fails (what was written so far stays, and a rerun resumes).
    """
    bar_ms = timeframe_ms(request.timeframe)
    last = last_bar_open(request.out)
    start = request.since_ms if last is None else max(request.since_ms, last + bar_ms)
    summary = HistorySummary(start_ms=start, resumed=last is not None)
    asyncio.run(fetch(exchange_address(request.venue), request, summary, progress))
    return summary
