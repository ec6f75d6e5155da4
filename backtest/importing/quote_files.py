"""CSV files of the system's own quotes: one row per stored quote, with the quote table's columns.

Columns, in this order: venue, symbol, received_at, venue_ts, seq, bid, bid_size, ask, ask_size,
depth. Times are ISO 8601 UTC ("2023-03-01T00:01:00.250Z"), venue_ts may be empty, prices and
sizes are exact decimal strings, and depth is the quote table's JSON ({"bids": [[price, amount],
...], "asks": [...]}, best first) or empty for a book of the bid and ask alone.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from backtest.importing.rows import EPOCH, MS, BadRow, decimal, iso, timestamp_ms
from trading.core.types import Level, Quote
from trading.core.validate import QuoteRejected, parse_quote
from trading.models import Quote as QuoteRow
from trading.storage import check_storable

QUOTE_COLUMNS = (
    "venue",
    "symbol",
    "received_at",
    "venue_ts",
    "seq",
    "bid",
    "bid_size",
    "ask",
    "ask_size",
    "depth",
)
# parse_quote's reasons as a file's bad rows are counted; any other reason is "unparsable".
_REJECTIONS = {"non_positive": "non_positive", "crossed": "crossed", "unsorted": "bad_book"}


def column_positions(header: list[str]) -> dict[str, int]:
    """Each quote column's position in a file with this header (the header holds them all)."""
    names = [name.strip().lower() for name in header]
    return {column: names.index(column) for column in QUOTE_COLUMNS}


def parse_quote_row(row: list[str], where: dict[str, int]) -> Quote:
    """One quote from a CSV row, checked as the listener checks a live one and as the quote table
    needs it. Raises BadRow: unparsable, non_positive, crossed, bad_book (levels out of order) or
    inconsistent_book (bid or ask columns that differ from the depth's best levels)."""
    try:
        value = {column: row[where[column]].strip() for column in QUOTE_COLUMNS}
    except IndexError:
        raise BadRow("unparsable", f"{len(row)} fields") from None
    top = [decimal(value[column], column) for column in ("bid", "bid_size", "ask", "ask_size")]
    book = _depth(value["depth"]) if value["depth"] else ([top[:2]], [top[2:]])
    try:
        quote = parse_quote(
            {
                "venue": value["venue"],
                "symbol": value["symbol"],
                "seq": _integer(value["seq"]),
                "received_ts": timestamp_ms(value["received_at"]),
                "venue_ts": timestamp_ms(value["venue_ts"]) if value["venue_ts"] else None,
                "bids": book[0],
                "asks": book[1],
            }
        )
        check_storable(quote)
    except QuoteRejected as exc:
        raise BadRow(_REJECTIONS.get(exc.reason, "unparsable"), exc.detail) from None
    if [*quote.bids[0], *quote.asks[0]] != top:
        raise BadRow("inconsistent_book", "the bid and ask columns differ from the depth's best levels")
    return quote


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRow("unparsable", f"seq is not an integer: {text!r}") from None


def _depth(text: str) -> tuple[list[Any], list[Any]]:
    try:
        depth = json.loads(text)
        return depth["bids"], depth["asks"]
    except (ValueError, TypeError, KeyError):
        raise BadRow("unparsable", f"depth is not a book: {text[:80]!r}") from None


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _levels(levels: Iterable[Level]) -> list[list[str]]:
    return [[_number(Decimal(price)), _number(Decimal(amount))] for price, amount in levels]


def quote_line(row: QuoteRow, venue: str) -> list[str]:
    """A stored quote as a CSV row in QUOTE_COLUMNS order."""
    venue_ts = "" if row.venue_ts is None else iso((row.venue_ts - EPOCH) // MS)
    depth = {"bids": _levels(row.depth["bids"]), "asks": _levels(row.depth["asks"])}
    return [
        venue,
        row.symbol,
        iso((row.received_at - EPOCH) // MS),
        venue_ts,
        str(row.seq),
        *(_number(value) for value in (row.bid, row.bid_size, row.ask, row.ask_size)),
        json.dumps(depth, separators=(",", ":")),
    ]


def export_quotes(path: Path, quotes: Iterable[QuoteRow]) -> int:
    """Write `quotes` (with their venues selected) to a CSV file, gzip-compressed when the name
    ends in .gz, in the layout the importer reads. Returns rows written."""
    opener = gzip.open if path.suffix == ".gz" else open
    written = 0
    with opener(path, "wt", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(QUOTE_COLUMNS)
        for row in quotes:
            writer.writerow(quote_line(row, row.venue.name))
            written += 1
    return written
