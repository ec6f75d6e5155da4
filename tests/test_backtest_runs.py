"""`manage.py backtest` against real PostgreSQL: recorded quotes in, a recorded run out (metrics,
trades, PNG report, admin page), sweeps with walk-forward windows, and promotion of the winner to a
running listener through real Redis."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client

from backtest import sweep
from backtest.engine import QuoteArrays, Replay
from backtest.engine.source import Slice
from backtest.metrics import summarize
from backtest.models import BacktestRun, BacktestTrade
from backtest.runs import RunSpec, build_setup, describe, replay
from devtools.bench.backtest import synthetic_quotes
from tests.conftest import fund, make_strategy, make_venue, next_message
from trading import strategies
from trading.listener import Listener
from trading.models import Quote as QuoteRow
from trading.models import StrategyConfig, Venue
from trading.storage import QuoteWriter

VENUES = ("alpha", "bravo")
DATA = Path(__file__).resolve().parent / "data"


def recorded(count: int = 3_000) -> QuoteArrays:
    """Generated quotes for alpha and bravo, stored in the quote table; the venues charge 2 bps."""
    for name in VENUES:
        fund(make_venue(name, taker_fee=Decimal("0.0002")), BTC="2", USDT="60000")
    data = synthetic_quotes(count, venues=VENUES, seed=5, jump_rate=0.02)
    QuoteWriter().write([data.quote(row) for row in range(len(data))])
    return data


def backtest(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(
        "backtest", "--symbol", "BTC/USDT", "--venues", ",".join(VENUES), *args, stdout=out, stderr=err
    )
    return out.getvalue(), err.getvalue()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.django_db
def test_a_run_is_recorded_with_its_metrics_trades_and_report(tmp_path: Path) -> None:
    recorded()
    plot = tmp_path / "report.png"

    output, progress = backtest(
        "--param", "min_profit_bps=3", "--latency-ms", "bravo=2", "--json", "--plot", str(plot)
    )

    figures = last_json(output)
    run = BacktestRun.objects.get(pk=figures["run"])
    assert figures["trades"] > 0
    assert {"net_pnl", "max_drawdown", "fees", "sharpe_hourly", "rejected", "inventory"} <= set(figures)
    assert run.status == BacktestRun.Status.DONE
    assert run.metrics["trades"] == BacktestTrade.objects.filter(run=run).count() == figures["trades"]
    assert Decimal(figures["net_pnl"]) == sum(t.net_pnl for t in run.trades.all())
    assert run.parameters["min_profit_bps"] == "3"
    assert run.parameters["latency_ms"] == {"alpha": 0, "bravo": 2}
    assert run.quotes == 3_000
    assert run.code_version
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "100% 3,000/3,000 quotes" in progress
    assert f"backtest #{run.pk} BTC/USDT on alpha, bravo" in output
    # The summary counts opportunities as the metrics do, the fleeting ones apart
    seen, fleeting = figures["opportunities_seen"], figures["opportunities_fleeting"]
    assert 0 < fleeting < seen
    assert f"seen {seen} ({fleeting} at one moment only)" in output


@pytest.mark.django_db
def test_the_same_slice_gives_the_same_results_and_matches_the_in_memory_replay() -> None:
    data = recorded()

    first = last_json(backtest("--json", "--no-plot")[0])
    second = last_json(backtest("--json", "--no-plot")[0])

    assert first.pop("run") != second.pop("run")
    assert first == second
    # Reading the quote table loses nothing: the same quotes from memory give the same figures.
    in_memory = Replay(build_setup(RunSpec(Slice("BTC/USDT", VENUES))), "BTC/USDT").run([data])
    assert summarize(in_memory) == {k: v for k, v in first.items() if k != "plot"}


@pytest.mark.django_db
def test_from_and_to_limit_the_replay_to_their_quotes() -> None:
    data = recorded()
    start, end = int(data.ts[1_000]), int(data.ts[2_000])
    expected = int(((data.ts >= start) & (data.ts < end)).sum())

    figures = last_json(backtest("--json", "--no-plot", "--from", _iso(start), "--to", _iso(end))[0])

    assert figures["quotes"] == expected


def _iso(ms: int) -> str:
    from trading.clock import from_ms

    return from_ms(ms).isoformat()


@pytest.mark.django_db
def test_an_unknown_parameter_or_venue_is_refused_before_any_work() -> None:
    recorded(10)
    with pytest.raises(CommandError, match="unknown strategy parameter 'min_profit'"):
        backtest("--param", "min_profit=3")
    with pytest.raises(CommandError, match="unknown venues: nowhere"):
        call_command("backtest", "--symbol", "BTC/USDT", "--venues", "alpha,nowhere")
    assert not BacktestRun.objects.exists()


@pytest.mark.django_db
def test_the_run_its_trades_and_its_plot_show_in_the_admin(admin_client: Client, tmp_path: Path) -> None:
    recorded()
    figures = last_json(backtest("--json", "--plot", str(tmp_path / "r.png"))[0])

    page = admin_client.get(f"/admin/backtest/backtestrun/{figures['run']}/change/").content.decode()

    assert 'src="data:image/png;base64,' in page
    assert "net_pnl" in page
    trade = BacktestTrade.objects.filter(run_id=figures["run"]).first()
    assert trade is not None
    assert f"/admin/backtest/backtesttrade/{trade.pk}/change/" in page


def import_slice(*exchanges: str) -> None:
    paths = [str(DATA / f"{exchange}_btcusd.csv.gz") for exchange in exchanges]
    call_command("import_quotes", *paths, "--half-spread-bps", "0.5", stdout=StringIO())


def shared_slice_run(plot: Path) -> dict:
    """The shared six hours of minute bars, on every venue with quotes of BTC/USD (at 1 bp fees)."""
    out = StringIO()
    call_command(
        "backtest",
        *("--symbol", "BTC/USD", "--fee", "coinbase=0.0001", "--fee", "kraken=0.0001"),
        *("--json", "--plot", str(plot)),
        stdout=out,
        stderr=StringIO(),
    )
    return last_json(out.getvalue())


@pytest.mark.django_db
def test_the_shared_2023_03_slice_trades_the_same_whichever_exchange_was_imported_first(
    tmp_path: Path,
) -> None:
    import_slice("coinbase", "kraken")
    first = shared_slice_run(tmp_path / "first.png")
    QuoteRow.objects.all().delete()
    import_slice("kraken", "coinbase")
    second = shared_slice_run(tmp_path / "second.png")

    assert first["quotes"] == 2 * 360 - 4  # six hours of bars, Coinbase missing four
    # Both venues' bars of a minute are decided on together, so with orders that land at once no
    # leg misses, and the order the files were imported in changes nothing.
    assert first["trades"] > 0
    assert first["trades_missed"] == 0
    figures = ("trades", "net_pnl", "fees", "opportunities_seen", "rejected", "inventory")
    assert {k: second[k] for k in figures} == {k: first[k] for k in figures}
    assert (tmp_path / "first.png").read_bytes().startswith(b"\x89PNG")
    assert not Venue.objects.filter(enabled=True).exists()  # history never turns collection on


@pytest.mark.django_db
def test_a_quote_age_chosen_for_the_run_is_every_replayed_venues_limit_and_is_recorded() -> None:
    recorded(10)  # alpha and bravo keep books for 5 s

    setup = build_setup(RunSpec(Slice("BTC/USDT", VENUES), overrides={"max_quote_age_ms": "61000"}))

    assert {name: state.max_quote_age_ms for name, state in setup.venues.items()} == {
        "alpha": 61_000,
        "bravo": 61_000,
    }
    run = describe(RunSpec(Slice("BTC/USDT", VENUES)), setup)
    assert run["venue_quote_age_ms"] == {"alpha": 61_000, "bravo": 61_000}
    default = build_setup(RunSpec(Slice("BTC/USDT", VENUES)))
    assert {state.max_quote_age_ms for state in default.venues.values()} == {5_000}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_sweep_ranks_walks_forward_and_promotes_its_winner_to_a_running_listener(redis_client) -> None:
    recorded()
    make_strategy(symbols=["BTC/USDT"], min_profit_bps=Decimal("50"), trade_size=Decimal("0.01"))
    listener = Listener(redis_client)
    listener.load_strategy()
    channel = listener.subscribe()

    output = backtest(
        "--grid",
        "min_profit_bps=1,1000",
        "trade_size=0.05,0.1",
        "--split",
        "0.5",
        "--processes",
        "2",
        "--promote",
        "--json",
    )[0]

    sweep = last_json(output)
    assert len(sweep["ranking"]) == 4
    # 1000 bps never clears; the bigger size earns more on the same gaps
    assert sweep["winner"] == {"min_profit_bps": "1", "trade_size": "0.1"}
    assert [row["trades"] for row in sweep["ranking"]][-2:] == [0, 0]
    [window] = sweep["walk_forward"]
    assert window["chosen"] == sweep["winner"]
    assert "walk-forward" in output
    # The old version is kept, inactive; the listener reloads the new one on control.strategy.
    assert list(StrategyConfig.objects.order_by("version").values_list("version", "active")) == [
        (1, False),
        (2, True),
    ]
    assert sweep["promoted_version"] == 2
    message = next_message(channel)
    assert message is not None
    listener.handle(message)
    assert listener.config is not None
    assert listener.config.version == 2
    assert listener.params is not None
    assert (listener.params.min_profit_bps, listener.params.trade_size) == (Decimal("1"), Decimal("0.1"))
    channel.close()


@pytest.mark.django_db
def test_rolling_walk_forward_windows_score_each_choice_on_the_window_after() -> None:
    data = recorded()
    span_s = (int(data.ts[-1]) - int(data.ts[0]) + 1) / 1000  # about 4.5 s of quotes

    sweep = last_json(
        backtest(
            "--grid",
            "trade_size=0.02,0.1",
            "--train-days",
            f"{1.5 / 86_400}",
            "--test-days",
            f"{1 / 86_400}",
            "--processes",
            "1",
            "--json",
        )[0]
    )

    windows = sweep["walk_forward"]
    assert len(windows) == int((span_s - 1.5 - 1) // 1) + 1 >= 2
    assert all(w["train_net_pnl"] is not None and w["test_net_pnl"] is not None for w in windows)
    assert windows[1]["train_from"] < windows[0]["test_to"] <= windows[1]["test_to"]
    assert StrategyConfig.objects.count() == 0  # nothing promoted without --promote


@pytest.mark.django_db(transaction=True)
def test_promotion_keeps_the_old_version_and_announces_only_after_commit(redis_client, names) -> None:
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"), note="hand-tuned")
    control = redis_client.pubsub(ignore_subscribe_messages=True)
    control.subscribe(names.strategy_control)

    with transaction.atomic():
        promoted = strategies.promote({"trade_size": Decimal("0.2")}, note="sweep winner")
        assert next_message(control, timeout=0.3) is None  # not before the commit

    assert json.loads(next_message(control)["data"]) == {"version": 2}
    old, new = StrategyConfig.objects.order_by("version")
    assert (old.active, old.trade_size, old.note) == (False, Decimal("0.5"), "hand-tuned")
    assert (new.active, new.trade_size, new.min_profit_bps, new.symbols) == (
        True,
        Decimal("0.2"),
        Decimal("5"),
        ["BTC/USDT"],
    )
    assert promoted.version == 2
    with pytest.raises(ValueError, match="not strategy parameters: symbols"):
        strategies.promote({"symbols": ["ETH/USDT"]}, note="")
    control.close()


@pytest.mark.django_db
def test_a_winner_that_never_traded_is_not_promoted() -> None:
    recorded()
    make_strategy(min_profit_bps=Decimal("5"))

    output = backtest("--grid", "min_profit_bps=900,1000", "--processes", "1", "--promote")[0]

    assert "nothing promoted: the winner made no trades" in output
    assert list(StrategyConfig.objects.values_list("version", "active")) == [(1, True)]


# --- an independent check on the shipped bars ----------------------------------------------------

HALF_SPREAD_BPS, FEE, MIN_PROFIT_BPS = Decimal("0.5"), Decimal("0.0001"), Decimal(1)
MARGIN_BPS = Decimal("0.05")  # the loop below rounds nothing; the engine sizes to amount steps


def profitable_minutes() -> dict[tuple[int, str, str], Decimal]:
    """Written apart from the engine, from the CSV files alone: for each minute both venues
    printed a bar, and each direction, what buying at one venue's ask and selling at the other's
    bid (each close -/+ half the spread, stamped at the bar's close) nets after both fees, in bps
    of the purchase. Keyed (bar close in epoch ms, buy venue, sell venue)."""
    closes: dict[str, dict[int, Decimal]] = {}
    for venue in ("coinbase", "kraken"):
        with gzip.open(DATA / f"{venue}_btcusd.csv.gz", "rt", newline="") as stream:
            rows = csv.DictReader(stream)
            closes[venue] = {
                int(datetime.fromisoformat(row["timestamp_utc"]).timestamp()) * 1000 + 60_000: Decimal(
                    row["close"]
                )
                for row in rows
            }
    h = HALF_SPREAD_BPS / 10_000
    nets = {}
    for minute in sorted(closes["coinbase"].keys() & closes["kraken"].keys()):
        for buy, sell in (("coinbase", "kraken"), ("kraken", "coinbase")):
            ask, bid = closes[buy][minute] * (1 + h), closes[sell][minute] * (1 - h)
            nets[(minute, buy, sell)] = (bid * (1 - FEE) - ask * (1 + FEE)) / ask * 10_000
    return nets


@pytest.mark.django_db
def test_every_profitable_minute_a_simple_loop_finds_on_the_shipped_bars_is_traded_with_no_leg_missed() -> (
    None
):
    import_slice("coinbase", "kraken")
    plenty = {"BTC": Decimal(1_000), "USD": Decimal(100_000_000)}
    spec = RunSpec(
        Slice("BTC/USD", ("coinbase", "kraken")),
        overrides={"min_profit_bps": str(MIN_PROFIT_BPS), "trade_size": "0.01"},
        fees={"coinbase": FEE, "kraken": FEE},
        funds={"coinbase": plenty, "kraken": plenty},
    )

    result = replay(spec)

    nets = profitable_minutes()
    must = {key for key, net in nets.items() if net >= MIN_PROFIT_BPS + MARGIN_BPS}
    traded = {(t.decided_ms, t.buy_venue, t.sell_venue) for t in result.trades}
    assert len(must) > 10
    assert must <= traded
    assert all(nets[key] >= MIN_PROFIT_BPS - MARGIN_BPS for key in traded)
    assert all(trade.filled for trade in result.trades)


# --- honest selection -----------------------------------------------------------------------------


def window(net: str, trades: int) -> dict:
    return {"net_pnl": net, "trades": trades}


def test_the_winner_is_chosen_out_of_sample_and_one_that_wins_only_in_sample_is_not_it() -> None:
    wide, tight = {"min_profit_bps": "20"}, {"min_profit_bps": "2"}
    # Two windows; per window the results of (wide, tight). tight shines on the training windows
    # and loses on the test windows after them: it fits the past only.
    train = [window("5", 3), window("40", 30), window("4", 2), window("35", 25)]
    test = [window("6", 2), window("-10", 20), window("3", 1), window("-8", 18)]

    [best, second] = sweep.in_and_out_of_sample([wide, tight], train, test, "net_pnl")

    assert (best["params"], best["in_sample_net_pnl"], best["out_of_sample_net_pnl"]) == (wide, "9", "9")
    assert (second["params"], second["in_sample_net_pnl"], second["out_of_sample_net_pnl"]) == (
        tight,
        "75",
        "-18",
    )
    assert sweep.refusal(best) is None
    assert sweep.refusal(second) == "the winner lost money out of sample (net -18)"
    assert sweep.refusal({**best, "out_of_sample_trades": 0}) == "the winner made no trades out of sample"
