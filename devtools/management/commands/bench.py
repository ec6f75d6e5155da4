"""`manage.py bench backtest|listener|storage|stream|tick-to-trade`: run a benchmark; the last line of
output is its figures as JSON."""

from __future__ import annotations

import importlib
import json
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from devtools.bench import BenchmarkUnavailable

BENCHMARKS = ("backtest", "listener", "storage", "stream", "tick-to-trade")


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_ints(raw: str) -> list[int]:
    return [positive_int(part) for part in raw.split(",") if part.strip()]


def format_figure(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"


class Command(BaseCommand):
    help = (
        "Run a benchmark (backtest, listener, storage, stream or tick-to-trade). "
        "The last line of output is one JSON object of figures."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("which", choices=BENCHMARKS)
        # No defaults here: each benchmark owns its own and ignores the options it does not use.
        parser.add_argument("--rows", type=positive_int, help="storage: quotes to write (default 200,000)")
        parser.add_argument(
            "--messages", type=positive_int, help="listener: quotes to publish (default 200,000)"
        )
        parser.add_argument(
            "--quotes", type=positive_int, help="backtest: quotes to replay (default 5,000,000)"
        )
        parser.add_argument(
            "--rate",
            type=positive_int,
            help=(
                "listener: ticks/s for the latency run (default 1,000); tick-to-trade: events/s (default 5); "
                "stream: updates/s for the latency run (default 1,000)"
            ),
        )
        parser.add_argument("--events", type=positive_int, help="tick-to-trade: timed events (default 200)")
        parser.add_argument(
            "--rates",
            type=positive_ints,
            help="stream: updates/s over both venues for throughput, comma-separated (default 1000,10000)",
        )
        parser.add_argument("--seconds", type=positive_int, help="stream: seconds of each rate (default 5)")
        parser.add_argument(
            "--dislocations", type=positive_int, help="stream: dislocations of each market (default 30)"
        )

    def handle(self, *args: Any, which: str, **options: Any) -> None:
        benchmark = importlib.import_module(f"devtools.bench.{which.replace('-', '_')}")
        try:
            figures: dict[str, float] = benchmark.run(self.stdout.write, **options)
        except BenchmarkUnavailable as exc:
            raise CommandError(f"bench {which}: {exc}") from None
        width = max(map(len, figures), default=0)
        for name, value in figures.items():
            self.stdout.write(f"{name:>{width}}  {format_figure(value)}")
        self.stdout.write(json.dumps(figures))
