"""import_quotes: candles and quote exports into the quote table through the real PostgreSQL,
with the candle-to-quote model, file-name inference, bad-row accounting and sequence numbering."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from hypothesis import given
from hypothesis import strategies as st

from backtest.importing.candles import Candle, CandleModel, candle_quote
from backtest.importing.files import CANDLES, QUOTES, UnreadableFile, detect_format, infer_series
from backtest.importing.quote_files import QUOTE_COLUMNS, export_quotes
from backtest.importing.rows import timestamp_ms
from tests.conftest import make_venue
from tests.quotes import book
from trading.models import Quote as QuoteRow
from trading.models import Venue
from trading.storage import QuoteWriter

DATA = Path(__file__).parent / "data"
MINUTE = timedelta(minutes=1)
CANDLE_HEADER = "timestamp_utc,open,high,low,close,volume"


def run_import(*args: str) -> str:
    out = io.StringIO()
    call_command("import_quotes", *args, stdout=out)
    return out.getvalue()


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def stored(venue: str, symbol: str) -> list[QuoteRow]:
    return list(QuoteRow.objects.filter(venue__name=venue, symbol=symbol).order_by("seq"))


def data_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("coinbase_btcusd.csv.gz", ("coinbase", "BTC/USD")),
        ("binance_btcusdt.csv.gz", ("binance", "BTC/USDT")),
        ("binance_usdcusdt.csv", ("binance", "USDC/USDT")),
        ("kraken_usdtusd.csv.gz", ("kraken", "USDT/USD")),
        ("kraken_eth-btc.csv", ("kraken", "ETH/BTC")),
        ("quotes.csv.gz", None),
        ("binance_xyz.csv", None),
    ],
)
def test_venue_and_symbol_come_from_the_file_name(name: str, expected: tuple[str, str] | None) -> None:
    assert infer_series(Path("/some/dir") / name) == expected


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("timestamp_utc,open_time,open,high,low,close,volume,close_time,quote_volume,trades", CANDLES),
        ("timestamp_utc,start,low,high,open,close,volume", CANDLES),
        ("timestamp_utc,open,high,low,close,volume,trades", CANDLES),
        (",".join(QUOTE_COLUMNS), QUOTES),
    ],
)
def test_each_layout_is_recognised_by_its_header(header: str, kind: str) -> None:
    assert detect_format(header.split(",")) == kind


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(UnreadableFile, match="neither quotes"):
        detect_format(["time", "price"])


def test_a_bar_becomes_close_plus_minus_half_spread_at_its_close_time() -> None:
    opened = timestamp_ms("2023-03-01T00:00:00Z")
    bar = Candle(
        opened, Decimal("23144.37"), Decimal("23153.68"), Decimal("23134.31"), Decimal("23146.93"), Decimal(7)
    )

    quote = candle_quote(bar, "coinbase", "BTC/USD", 7, CandleModel(Decimal(2), Decimal("0.5")))

    # 2 bps of 23146.93 is 4.629386, each side of the close.
    assert quote.bids == ((Decimal("23142.300614"), Decimal("0.5")),)
    assert quote.asks == ((Decimal("23151.559386"), Decimal("0.5")),)
    assert quote.received_ts == quote.venue_ts == timestamp_ms("2023-03-01T00:01:00Z")
    assert (quote.venue, quote.symbol, quote.seq) == ("coinbase", "BTC/USD", 7)


prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(10**9), places=8)


@given(
    close=prices,
    half_spread=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(500), places=2),
    opened=st.integers(min_value=0, max_value=4 * 10**12),
    bar_ms=st.sampled_from([60_000, 300_000, 3_600_000]),
)
def test_a_modelled_quote_is_never_seen_before_its_bar_closes_nor_narrower_than_modelled(
    close: Decimal, half_spread: Decimal, opened: int, bar_ms: int
) -> None:
    bar = Candle(opened, close, close, close, close, Decimal(0))

    quote = candle_quote(bar, "v", "BTC/USD", 1, CandleModel(half_spread, Decimal(1), bar_ms))

    assert quote.timestamp == quote.received_ts == opened + bar_ms
    assert quote.best_bid < close < quote.best_ask
    assert quote.best_ask - quote.best_bid >= 2 * close * half_spread / 10_000


@pytest.mark.django_db(transaction=True)
def test_bad_rows_are_skipped_and_counted_with_their_line_numbers(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "kraken_btcusd.csv",
        [
            CANDLE_HEADER,
            "2023-03-01T00:00:00Z,100,101,99,100.5,1",
            "2023-03-01T00:01:00Z,100.5,102,100,101,2",
            "2023-03-01T00:01:00Z,100.5,102,100,101,2",  # line 4: duplicate
            "2023-03-01T00:02:00Z,101,101,100,100,0",
            "2023-03-01T00:00:00Z,100,101,99,100.5,1",  # line 6: unsorted
            "2023-03-01T00:03:00Z,100,101,99,-1,1",  # line 7: non-positive close
            "2023-03-01T00:03:00Z,100,101,99,abc,1",  # line 8: unparsable
            "2023-03-01T00:06:00Z,100,101,99,100,1",  # line 9: after a gap of 3 bars
            "2023-03-01T00:07:00Z,100,99,101,100,1",  # line 10: high below low
            "2023-03-01T00:08:00Z,100,101,99,99.5,1",  # line 11: after a gap of 1 bar
            "yesterday,100,101,99,100,1",  # line 12: unparsable time
        ],
    )

    output = run_import(str(path))

    assert "rows read 11, quotes written 5" in output
    assert "skipped 1 duplicate (first at lines 4)" in output
    assert "skipped 1 unsorted (first at lines 6)" in output
    assert "skipped 1 non_positive (first at lines 7)" in output
    assert "skipped 2 unparsable (first at lines 8, 12)" in output
    assert "skipped 1 inconsistent_bar (first at lines 10)" in output
    assert "2 gaps, 4 bars missing (first before lines 9, 11)" in output
    quotes = stored("kraken", "BTC/USD")
    opened = datetime(2023, 3, 1, tzinfo=UTC)
    assert [(q.seq, q.received_at) for q in quotes] == [
        (seq, opened + minute * MINUTE) for seq, minute in zip(range(1, 6), [1, 2, 3, 7, 9], strict=True)
    ]
    # The default model: 1 bps each side of the close.
    assert [(q.bid, q.ask) for q in quotes][-1] == (Decimal("99.49005"), Decimal("99.50995"))


@pytest.mark.django_db(transaction=True)
def test_a_slice_of_the_shared_data_imports_every_bar_with_per_venue_spreads() -> None:
    coinbase, kraken = DATA / "coinbase_btcusd.csv.gz", DATA / "kraken_btcusd.csv.gz"

    output = run_import(
        str(coinbase),
        str(kraken),
        "--half-spread-bps",
        "0.5",
        "--half-spread-bps",
        "kraken=2",
        "--depth-amount",
        "0.25",
    )

    for path, venue, half_spread in ((coinbase, "coinbase", "0.5"), (kraken, "kraken", "2")):
        rows, quotes = data_rows(path), stored(venue, "BTC/USD")
        assert len(quotes) == len(rows)
        close = Decimal(rows[0]["close"])
        h = close * Decimal(half_spread) / 10_000
        assert (quotes[0].bid, quotes[0].ask, quotes[0].bid_size) == (close - h, close + h, Decimal("0.25"))
        assert quotes[0].received_at == datetime(2023, 3, 10, 0, 1, tzinfo=UTC)
        assert Venue.objects.get(name=venue).ccxt_id == venue
    # The one hole in the slice: Coinbase printed no bars from 02:40 to 02:43.
    assert "1 gap, 4 bars missing" in output.split("kraken_btcusd")[0]
    assert "gaps" not in output.split("kraken_btcusd")[1]


@pytest.mark.django_db(transaction=True)
def test_importing_again_continues_the_sequence_numbers() -> None:
    kraken = DATA / "kraken_btcusd.csv.gz"
    bars = len(data_rows(kraken))

    first = run_import(str(kraken))
    again = run_import(str(kraken), "--venue", "kraken", "--symbol", "BTC/USD")

    assert [q.seq for q in stored("kraken", "BTC/USD")] == list(range(1, 2 * bars + 1))
    assert f"seq {bars + 1}..{2 * bars}" in again
    assert "warning" not in first
    assert f"warning: {bars} quotes of kraken BTC/USD were already stored for this time range" in again


@pytest.mark.django_db(transaction=True)
def test_exported_quotes_import_unchanged_under_another_venue(tmp_path: Path) -> None:
    make_venue("binance")
    recorded = [
        book(
            "binance",
            [("60000.5", "0.5"), ("60000", "1.25")],
            [("60001", "0.3")],
            seq=1,
            received_ts=1_700_000_000_250,
        ),
        book(
            "binance",
            [("60000.5", "0.4")],
            [("60001.5", "2")],
            seq=2,
            received_ts=1_700_000_001_000,
            venue_ts=1_700_000_000_990,
        ),
    ]
    QuoteWriter().write(recorded)
    path = tmp_path / "recording.csv.gz"
    export_quotes(path, QuoteRow.objects.select_related("venue").order_by("seq"))

    run_import(str(path), "--venue", "replay")

    fields = ("symbol", "bid", "bid_size", "ask", "ask_size", "depth", "received_at", "venue_ts", "seq")
    original = [[getattr(q, f) for f in fields] for q in stored("binance", "BTC/USDT")]
    assert [[getattr(q, f) for f in fields] for q in stored("replay", "BTC/USDT")] == original


@pytest.mark.django_db(transaction=True)
def test_bad_quote_rows_are_named(tmp_path: Path) -> None:
    def row(seq: int, bid: str, ask: str, depth: str = "") -> str:
        return f'binance,BTC/USDT,2023-03-01T00:00:0{seq}.500Z,,{seq},{bid},1,{ask},2,"{depth}"'

    path = write_csv(
        tmp_path / "quotes.csv",
        [
            ",".join(QUOTE_COLUMNS),
            row(1, "100", "101"),
            row(1, "100", "101"),  # line 3: the same sequence number again
            row(2, "101", "100"),  # line 4: crossed
            row(3, "0", "101"),  # line 5: non-positive
            row(6, "100", "101"),  # line 6: sequence numbers 2 to 5 never reached the file
            row(7, "100", "101", '{""bids"": [[""99"", ""1""]], ""asks"": [[""101"", ""2""]]}'),  # line 7
            row(
                7,
                "100",
                "101",
                '{""bids"": [[""100"", ""1""]], ""asks"": [[""101"", ""2""], [""102"", ""1""]]}',
            ),
        ],
    )

    output = run_import(str(path))

    assert "rows read 7, quotes written 3" in output
    assert "skipped 1 duplicate (first at lines 3)" in output
    assert "skipped 1 crossed (first at lines 4)" in output
    assert "skipped 1 non_positive (first at lines 5)" in output
    assert "skipped 1 inconsistent_book (first at lines 7)" in output
    assert "1 gap, 4 sequence numbers missing (first before lines 6)" in output
    quotes = stored("binance", "BTC/USDT")
    assert [q.seq for q in quotes] == [1, 2, 3]
    assert quotes[-1].depth == {"bids": [["100", "1"]], "asks": [["101", "2"], ["102", "1"]]}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("make_file", "args", "message"),
    [
        (lambda tmp: write_csv(tmp / "bars.csv", [CANDLE_HEADER]), [], "--venue and --symbol"),
        (lambda tmp: write_csv(tmp / "kraken_btcusd.csv", ["time,price"]), [], "neither quotes"),
        (lambda tmp: tmp / "kraken_btcusd.csv", [], "No such file"),
        (
            lambda tmp: write_csv(tmp / "kraken_btcusd.csv", [CANDLE_HEADER]),
            ["--half-spread-bps", "0"],
            "positive",
        ),
    ],
)
def test_a_file_that_cannot_be_read_stops_with_a_clear_message(
    tmp_path: Path, make_file: Callable[[Path], Path], args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run_import(str(make_file(tmp_path)), *args)
    assert not QuoteRow.objects.exists()
