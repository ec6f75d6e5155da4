"""`manage.py fetch_history`: download OHLCV bars through ccxt into a CSV.gz that import_quotes reads."""

from __future__ import annotations

import csv
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backtest.importing.files import UnreadableFile
from backtest.importing.history import HistoryRequest, HistorySummary, fetch_history
from backtest.importing.rows import BadRow, iso, timeframe_ms, timestamp_ms
from trading.core.types import split_symbol
from trading.venues.base import VenueError


def default_out(venue: str, symbol: str) -> Path:
    """The name import_quotes reads the venue and symbol from: binance_btcusdt.csv.gz."""
    base, quote = split_symbol(symbol)
    return Path(f"{venue}_{base}{quote}.csv.gz".lower())


def moment(text: str, option: str) -> int:
    try:
        return timestamp_ms(text)
    except BadRow as exc:
        raise CommandError(f"{option}: {exc.detail}") from exc


class Command(BaseCommand):
    help = (
        "Download OHLCV bars opening in [--since, --until) through ccxt (rate limited) into a CSV.gz "
        "of timestamp_utc,open,high,low,close,volume; rerun to resume after the file's last bar. "
        "A Venue row's ccxt id and API URL are used when the venue is in the table."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--venue", required=True, help="A Venue name, or a ccxt exchange id")
        parser.add_argument("--symbol", required=True, help="Unified symbol, e.g. BTC/USDT")
        parser.add_argument("--since", required=True, help="ISO 8601 time of the first bar (UTC)")
        parser.add_argument("--until", help="ISO 8601 time before which bars open (default: now)")
        parser.add_argument("--timeframe", default="1m", help="Bar length as ccxt names it (default 1m)")
        parser.add_argument("--out", type=Path, help="Output file (default <venue>_<pair>.csv.gz)")

    def handle(self, *args: Any, **options: Any) -> None:
        request = self.history_request(options)
        try:
            summary = fetch_history(request, self.show_progress)
        except (UnreadableFile, VenueError, OSError, EOFError, csv.Error) as exc:
            raise CommandError(str(exc)) from exc
        for line in self.summary_lines(request, summary):
            self.stdout.write(line)

    def history_request(self, options: dict[str, Any]) -> HistoryRequest:
        try:
            split_symbol(options["symbol"])
            timeframe_ms(options["timeframe"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        since = moment(options["since"], "--since")
        until = None if options["until"] is None else moment(options["until"], "--until")
        if until is not None and until <= since:
            raise CommandError("--until must be later than --since")
        return HistoryRequest(
            venue=options["venue"],
            symbol=options["symbol"],
            since_ms=since,
            until_ms=until,
            timeframe=options["timeframe"],
            out=options["out"] or default_out(options["venue"], options["symbol"]),
        )

    def show_progress(self, summary: HistorySummary) -> None:
        assert summary.last_ms is not None, "progress follows a written page"
        self.stdout.write(f"{summary.candles} bars in {summary.pages} pages, up to {iso(summary.last_ms)}")

    def summary_lines(self, request: HistoryRequest, summary: HistorySummary) -> list[str]:
        resumed = (
            f" (resumed from {iso(summary.start_ms)}, after the file's last bar)" if summary.resumed else ""
        )
        lines = [f"{request.out}: {summary.candles} bars written{resumed}"]
        if summary.first_ms is not None and summary.first_ms > summary.start_ms:
            lines.append(f"  the venue had no bars from {iso(summary.start_ms)} to {iso(summary.first_ms)}")
        if summary.last_ms is not None:
            lines.append(f"  last bar opens at {iso(summary.last_ms)}")
        return lines
