"""`manage.py import_quotes PATH...`: load recorded quotes or one-minute candles into the quote table."""

from __future__ import annotations

import csv
from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backtest.importing.files import CANDLES, FORMATS, UnreadableFile
from backtest.importing.loader import ImportOptions, ImportSummary, PerVenue, import_file
from backtest.importing.rows import iso, timeframe_ms


def per_venue(values: list[str] | None, default: Decimal, option: str) -> PerVenue:
    """PerVenue from repeated "N" (every venue) and "venue=N" values; each must be positive."""
    venues: dict[str, Decimal] = {}
    for value in values or []:
        venue, _, number = value.rpartition("=")
        try:
            amount = Decimal(number)
        except InvalidOperation:
            raise CommandError(f"{option} takes N or VENUE=N, got {value!r}") from None
        if not amount.is_finite() or amount <= 0:
            raise CommandError(f"{option} must be positive, got {value!r}")
        if venue:
            venues[venue] = amount
        else:
            default = amount
    return PerVenue(default, venues)


def summary_lines(summary: ImportSummary) -> list[str]:
    """The readable account of one file: what it held, what was stored, what was skipped and why."""
    lines = [
        f"{summary.path.name}: {summary.kind}, rows read {summary.rows_read}, "
        f"quotes written {summary.quotes_written}"
    ]
    for (venue, symbol), span in sorted(summary.series.items()):
        lines.append(
            f"  {venue} {symbol}: {span.quotes} quotes from {iso(span.first_ts)} to {iso(span.last_ts)}, "
            f"seq {span.first_seq}..{span.first_seq + span.quotes - 1}"
        )
        if summary.already_stored.get((venue, symbol)):
            lines.append(
                f"  warning: {summary.already_stored[(venue, symbol)]} quotes of {venue} {symbol} "
                "were already stored for this time range"
            )
    for reason, count in sorted(summary.skipped.counts.items()):
        lines.append(f"  skipped {count} {reason} (first at lines {_numbers(summary.skipped.lines[reason])})")
    if summary.missing:
        gaps, first = summary.gaps.counts["gap"], _numbers(summary.gaps.lines["gap"])
        what = "bars" if summary.kind == CANDLES else "sequence numbers"
        plural = "" if gaps == 1 else "s"
        lines.append(f"  {gaps} gap{plural}, {summary.missing} {what} missing (first before lines {first})")
    return lines


def _numbers(values: list[int]) -> str:
    return ", ".join(map(str, values))


class Command(BaseCommand):
    help = (
        "Load CSV or CSV.gz files of quotes or one-minute OHLCV candles into the quote table. A bar "
        "becomes one quote at its close time: bid = close * (1 - h), ask = close * (1 + h), h = "
        "half spread in bps / 10000, with --depth-amount at the touch."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument("--venue", help="Venue name (default: from the file name, or the quote rows)")
        parser.add_argument("--symbol", help="Symbol such as BTC/USD (default: as for --venue)")
        parser.add_argument("--format", choices=FORMATS, default="auto", help="Default: from the header")
        parser.add_argument(
            "--half-spread-bps",
            action="append",
            metavar="[VENUE=]N",
            help="Candles: modelled half spread in basis points, for every venue or one (default 1)",
        )
        parser.add_argument(
            "--depth-amount",
            action="append",
            metavar="[VENUE=]A",
            help="Candles: modelled amount at the best bid and ask, base currency (default 1)",
        )
        parser.add_argument("--timeframe", default="1m", help="Candles: the bar length (default 1m)")
        parser.add_argument("--batch-size", type=int, default=10_000, help="Rows per COPY (default 10000)")

    def handle(self, *args: Any, paths: list[Path], **options: Any) -> None:
        import_options = self.import_options(options)
        for path in paths:
            try:
                summary = import_file(path, import_options, self.show_progress)
            except (UnreadableFile, OSError, EOFError, csv.Error) as exc:
                raise CommandError(f"{path}: {exc}") from exc
            self.stdout.write("\n".join(summary_lines(summary)))

    def import_options(self, options: dict[str, Any]) -> ImportOptions:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            bar_ms = timeframe_ms(options["timeframe"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        return ImportOptions(
            venue=options["venue"],
            symbol=options["symbol"],
            format=options["format"],
            half_spread_bps=per_venue(options["half_spread_bps"], Decimal(1), "--half-spread-bps"),
            touch_amount=per_venue(options["depth_amount"], Decimal(1), "--depth-amount"),
            bar_ms=bar_ms,
            batch_size=options["batch_size"],
        )

    def show_progress(self, summary: ImportSummary) -> None:
        self.stdout.write(
            f"{summary.path.name}: {summary.rows_read} rows read, {summary.quotes_written} quotes written"
        )
