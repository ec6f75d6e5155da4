"""Loading a data file into the quote table, streamed and written in batches through QuoteWriter.

A file is one transaction: it is stored whole or not at all, so an interrupted import can simply
be run again. Each (venue, symbol) series is numbered on from the highest sequence number already
stored for it, and a venue missing from the Venue table is created (kind ccxt, ccxt_id = name).
Bad rows are skipped and counted by reason with their first line numbers; gaps are counted and
reported, never filled.
"""

from __future__ import annotations

import csv
import itertools
from _csv import Reader
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from django.db import transaction
from django.db.models import Max

from backtest.importing.candles import CandleColumns, CandleModel, candle_quote, parse_candle
from backtest.importing.files import CANDLES, UnreadableFile, detect_format, infer_series, open_text
from backtest.importing.quote_files import column_positions, parse_quote_row
from backtest.importing.rows import BadRow, SeriesOrder, Tally, utc
from trading.core.types import Quote
from trading.models import Quote as QuoteRow
from trading.models import Venue
from trading.storage import QuoteWriter

Series = tuple[str, str]


@dataclass(frozen=True)
class PerVenue:
    """A value with per-venue exceptions, as given by `--half-spread-bps 1 --half-spread-bps kraken=2`."""

    default: Decimal
    venues: dict[str, Decimal] = field(default_factory=dict)

    def __call__(self, venue: str) -> Decimal:
        return self.venues.get(venue, self.default)


@dataclass(frozen=True)
class ImportOptions:
    """What the import_quotes command was told; venue and symbol override a file's own."""

    venue: str | None = None
    symbol: str | None = None
    format: str = "auto"
    half_spread_bps: PerVenue = PerVenue(Decimal(1))
    touch_amount: PerVenue = PerVenue(Decimal(1))
    bar_ms: int = 60_000
    batch_size: int = 10_000


@dataclass
class Span:
    """The quotes a file gave one series: the first sequence number they got, and their times."""

    first_seq: int
    first_ts: int
    last_ts: int
    quotes: int = 0

    def add(self, quote: Quote) -> None:
        self.first_ts = min(self.first_ts, quote.received_ts)
        self.last_ts = max(self.last_ts, quote.received_ts)
        self.quotes += 1


@dataclass
class ImportSummary:
    """What one file gave: rows read, quotes written per series, skipped rows and gaps by reason,
    and per series how many quotes were already stored for the same time range (imported before?)."""

    path: Path
    kind: str = ""
    series: dict[Series, Span] = field(default_factory=dict)
    rows_read: int = 0
    quotes_written: int = 0
    skipped: Tally = field(default_factory=Tally)
    gaps: Tally = field(default_factory=Tally)
    missing: int = 0  # bars (candles) or sequence numbers (quotes) that the gaps leave out
    already_stored: dict[Series, int] = field(default_factory=dict)

    def saw(self, quote: Quote) -> None:
        series = (quote.venue, quote.symbol)
        span = self.series.setdefault(series, Span(quote.seq, quote.received_ts, quote.received_ts))
        span.add(quote)


Progress = Callable[[ImportSummary], None]


def import_file(path: Path, options: ImportOptions, progress: Progress | None = None) -> ImportSummary:
    """Load one CSV or CSV.gz file of quotes or candles into the quote table, in one transaction.

    Raises UnreadableFile (no header, unknown columns, no venue or symbol for candles) before
    anything is written; OSError or EOFError when the file cannot be read or its compression is
    damaged, and csv.Error for a line that is not CSV, with nothing stored.
    """
    summary = ImportSummary(path)
    with open_text(path) as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise UnreadableFile(f"{path} is empty")
        summary.kind = detect_format(header, options.format)
        if summary.kind == CANDLES:
            quotes = candle_quotes(reader, header, file_series(path, options), options, summary)
        else:
            quotes = file_quotes(reader, header, options, summary)
        with transaction.atomic():
            write_batches(quotes, options.batch_size, summary, progress)
            summary.already_stored = {
                series: stored_before(series, span) for series, span in summary.series.items()
            }
    return summary


def stored_before(series: Series, span: Span) -> int:
    """Quotes of `series` stored before this import whose times fall within `span`."""
    venue, symbol = series
    return QuoteRow.objects.filter(
        venue__name=venue,
        symbol=symbol,
        seq__lt=span.first_seq,
        received_at__range=(utc(span.first_ts), utc(span.last_ts)),
    ).count()


def file_series(path: Path, options: ImportOptions) -> Series:
    """The venue and symbol of a candle file: the options, else the file's name."""
    inferred = infer_series(path)
    venue = options.venue or (inferred and inferred[0])
    symbol = options.symbol or (inferred and inferred[1])
    if not venue or not symbol:
        raise UnreadableFile(
            f"cannot tell the venue and symbol from the name {path.name!r} "
            "(expected <venue>_<pair>.csv.gz, e.g. coinbase_btcusd.csv.gz); give --venue and --symbol"
        )
    return venue, symbol


def candle_quotes(
    reader: Reader, header: list[str], series: Series, options: ImportOptions, summary: ImportSummary
) -> Iterator[Quote]:
    """The model's quote for each good bar, unnumbered (seq 0), counting bad rows and gaps."""
    columns = CandleColumns.from_header(header)
    assert columns is not None, "detect_format found the candle columns"
    venue, symbol = series
    model = CandleModel(options.half_spread_bps(venue), options.touch_amount(venue), options.bar_ms)
    order = SeriesOrder(options.bar_ms)
    for row in reader:
        summary.rows_read += 1
        try:
            candle = parse_candle(row, columns)
            count_gap(summary, reader.line_num, order.admit(candle.open_ms))
        except BadRow as bad:
            summary.skipped.add(bad.reason, reader.line_num)
            continue
        yield candle_quote(candle, venue, symbol, 0, model)


def file_quotes(
    reader: Reader, header: list[str], options: ImportOptions, summary: ImportSummary
) -> Iterator[Quote]:
    """Each good quote of a quotes file, with the venue and symbol the options give. Within each
    series the file's own sequence numbers must rise; a jump is a gap (quotes the recorder missed)."""
    where = column_positions(header)
    orders: dict[Series, SeriesOrder] = {}
    for row in reader:
        summary.rows_read += 1
        try:
            quote = parse_quote_row(row, where)
            quote = replace(quote, venue=options.venue or quote.venue, symbol=options.symbol or quote.symbol)
            order = orders.setdefault((quote.venue, quote.symbol), SeriesOrder(1))
            count_gap(summary, reader.line_num, order.admit(quote.seq))
        except BadRow as bad:
            summary.skipped.add(bad.reason, reader.line_num)
            continue
        yield quote


def count_gap(summary: ImportSummary, line: int, missing: int) -> None:
    if missing:
        summary.gaps.add("gap", line)
        summary.missing += missing


def write_batches(
    quotes: Iterator[Quote], batch_size: int, summary: ImportSummary, progress: Progress | None
) -> None:
    """Number and write `quotes` `batch_size` at a time, calling `progress` after each batch."""
    writer, numbering = QuoteWriter(), Numbering()
    while batch := list(itertools.islice(quotes, batch_size)):
        numbered = [numbering.next(quote) for quote in batch]
        for quote in numbered:
            summary.saw(quote)
        summary.quotes_written += writer.write(numbered)
        if progress is not None:
            progress(summary)


class Numbering:
    """The next sequence number of each series, on from the highest already stored. The first use
    of a venue creates it if missing and locks its row, so that two imports into one venue take
    turns instead of handing out the same numbers."""

    def __init__(self) -> None:
        self._next: dict[Series, int] = {}

    def next(self, quote: Quote) -> Quote:
        series = (quote.venue, quote.symbol)
        seq = self._next.get(series) or self._start(series)
        self._next[series] = seq + 1
        return replace(quote, seq=seq)

    def _start(self, series: Series) -> int:
        venue, symbol = series
        row = ensure_venue(venue)
        stored = QuoteRow.objects.filter(venue=row, symbol=symbol).aggregate(top=Max("seq"))["top"]
        return (stored or 0) + 1


def ensure_venue(name: str) -> Venue:
    """The venue named `name`, locked until the transaction ends. One missing is created as a
    disabled ccxt venue: history is no reason to collect from (or trade on) the exchange."""
    Venue.objects.get_or_create(
        name=name, defaults={"kind": Venue.Kind.CCXT, "ccxt_id": name, "enabled": False}
    )
    return Venue.objects.select_for_update().get(name=name)
