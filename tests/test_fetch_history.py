"""fetch_history: OHLCV through the real ccxt client from the local exchange emulator into a file
that import_quotes reads, page by page, resuming where the file ends."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from backtest.importing.candles import CANDLE_HEADER
from backtest.importing.rows import iso, timestamp_ms
from devtools.emulator import Emulator, emulate
from tests.conftest import emulated_venues
from trading.clock import now_ms
from trading.models import Quote as QuoteRow
from trading.models import Venue

START = timestamp_ms("2023-03-01T00:00:00Z")
MINUTE_MS = 60_000
BARS = 1200  # more than one page in both dialects (binance 500, kraken 720)
KLINES = "/api/v3/klines"


Bar = tuple[int, str, str, str, str, str]


def bars(start: int, count: int) -> list[Bar]:
    """A deterministic minute series: the close walks up and down by cents."""
    series = []
    for i in range(count):
        close = Decimal(20_000) + Decimal((i * 37) % 101 - 50) / 100
        opening = close - Decimal("0.5")
        high, low = str(close + 1), str(opening - 1)
        series.append((start + i * MINUTE_MS, str(opening), high, low, str(close), "0.125"))
    return series


SERIES = bars(START, BARS)


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate() as running:
        yield running


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    for venue in ("binance", "kraken"):
        running_emulator.set_candles(venue, "BTC/USDT", SERIES)
    yield running_emulator
    running_emulator.reset()


@pytest.fixture
def venues(emulator: Emulator) -> dict[str, Venue]:
    return emulated_venues(emulator)


def fetch(venue: str, out: Path, since: str = iso(START), until: str | None = None) -> str:
    args = ["--venue", venue, "--symbol", "BTC/USDT", "--since", since, "--out", str(out)]
    stdout = io.StringIO()
    call_command("fetch_history", *args, *(["--until", until] if until else []), stdout=stdout)
    return stdout.getvalue()


def file_rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as stream:
        return list(csv.reader(stream))


def numbers(values: list[str]) -> list[Decimal]:
    return [Decimal(value) for value in values]


def expected_rows(series: list[Bar]) -> list[tuple[str, list[Decimal]]]:
    return [(iso(opened), numbers(values)) for opened, *values in series]


def written(path: Path) -> list[tuple[str, list[Decimal]]]:
    """The file's bars, prices compared as numbers (20000.5 and 20000.50 are one price)."""
    rows = file_rows(path)
    assert rows[0] == list(CANDLE_HEADER)
    return [(stamp, numbers(values)) for stamp, *values in rows[1:]]


@pytest.mark.django_db
@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_every_bar_is_downloaded_once_in_order(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path, venue: str
) -> None:
    out = tmp_path / f"{venue}_btcusdt.csv.gz"

    output = fetch(venue, out, until=iso(START + BARS * MINUTE_MS))

    assert written(out) == expected_rows(SERIES)
    assert f"{BARS} bars written" in output


@pytest.mark.django_db
def test_a_rerun_resumes_after_the_last_bar_in_the_file(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "binance_btcusdt.csv.gz"
    fetch("binance", out, until=iso(START + 600 * MINUTE_MS))
    pages_before = emulator.request_count("binance", KLINES)

    output = fetch("binance", out, until=iso(START + BARS * MINUTE_MS))

    assert written(out) == expected_rows(SERIES)
    assert f"600 bars written (resumed from {iso(START + 600 * MINUTE_MS)}" in output
    # 600 bars were left: one page of 500 and one of 100, nothing fetched twice.
    assert emulator.request_count("binance", KLINES) - pages_before == 2


@pytest.mark.django_db
def test_a_start_before_the_venues_history_is_reported(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "binance_btcusdt.csv.gz"

    output = fetch("binance", out, since=iso(START - 90 * MINUTE_MS), until=iso(START + 10 * MINUTE_MS))

    assert written(out) == expected_rows(SERIES[:10])
    assert f"the venue had no bars from {iso(START - 90 * MINUTE_MS)} to {iso(START)}" in output


@pytest.mark.django_db
def test_the_bar_still_forming_is_left_for_the_next_run(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path
) -> None:
    current_minute = now_ms() // MINUTE_MS * MINUTE_MS
    recent = bars(current_minute - 3 * MINUTE_MS, 4)  # three closed bars and the current one
    emulator.set_candles("binance", "BTC/USDT", recent)
    out = tmp_path / "binance_btcusdt.csv.gz"

    fetch("binance", out, since=iso(recent[0][0]))

    assert written(out) == expected_rows(recent[:3])


@pytest.mark.django_db(transaction=True)
def test_a_downloaded_file_imports_as_one_quote_per_bar(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "binance_btcusdt.csv.gz"
    fetch("binance", out, until=iso(START + BARS * MINUTE_MS))

    call_command("import_quotes", str(out), stdout=io.StringIO())

    quotes = QuoteRow.objects.filter(venue__name="binance", symbol="BTC/USDT").order_by("seq")
    assert quotes.count() == BARS
    last_close = Decimal(SERIES[-1][4])
    assert quotes.last().received_at.timestamp() * 1000 == SERIES[-1][0] + MINUTE_MS
    assert quotes.last().bid < last_close < quotes.last().ask


@pytest.mark.django_db
def test_a_failing_venue_stops_with_its_error_and_keeps_the_file(
    venues: dict[str, Venue], emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "binance_btcusdt.csv.gz"
    fetch("binance", out, until=iso(START + 10 * MINUTE_MS))
    emulator.set_fault("binance", status=503)

    with pytest.raises(CommandError, match="binance"):
        fetch("binance", out, until=iso(START + BARS * MINUTE_MS))

    assert written(out) == expected_rows(SERIES[:10])
