"""Metrics, grids and walk-forward windows, computed by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from backtest.engine import Result, SimTrade
from backtest.metrics import equity_curve, hourly_pnl, sharpe, summarize
from backtest.sweep import combinations, parse_grid, rolling_windows, split_window

HOUR = 3_600_000


def trade(settled_ms: int, net: str) -> SimTrade:
    """A filled trade of 1 unit whose sale nets `net` over its purchase, fee-free."""
    amount, price = Decimal(1), Decimal(100)
    return SimTrade(
        decided_ms=settled_ms,
        buy_venue="a",
        sell_venue="b",
        amount=amount,
        buy_price=price,
        sell_price=price + Decimal(net),
        expected_net=Decimal(net),
        bought=amount,
        cost=price,
        sold=amount,
        proceeds=price + Decimal(net),
        settled_ms=settled_ms,
        legs_open=0,
    )


def test_max_drawdown_is_the_deepest_fall_from_a_running_peak() -> None:
    trades = [trade(i, net) for i, net in enumerate(["3", "-2", "-4", "5", "-1"])]

    curve = equity_curve(trades)

    assert [equity for _, equity in curve] == [3, 1, -3, 2, 1]
    assert Decimal(summarize(Result("BTC/USDT", trades=trades))["max_drawdown"]) == 6


def test_a_curve_that_only_rises_has_no_drawdown() -> None:
    assert Decimal(summarize(Result("BTC/USDT", trades=[trade(0, "1"), trade(1, "2")]))["max_drawdown"]) == 0


def test_sharpe_uses_every_hour_of_the_replay_quiet_ones_included() -> None:
    trades = [trade(10, "1"), trade(2 * HOUR + 5, "2")]

    hours = hourly_pnl(trades, first_ms=0, last_ms=2 * HOUR + 10)

    assert hours == [1, 0, 2]  # mean 1, sample standard deviation 1
    assert sharpe(hours) == pytest.approx(math.sqrt(24 * 365))
    assert sharpe([Decimal(1), Decimal(1)]) is None  # no variation: undefined, not infinite


def test_a_grid_expands_to_every_combination() -> None:
    grid = parse_grid(["min_profit_bps=5,10,20", "trade_size=0.01,0.05"])

    combos = combinations(grid)

    assert len(combos) == 6
    assert combos[0] == {"min_profit_bps": "5", "trade_size": "0.01"}
    assert combos[-1] == {"min_profit_bps": "20", "trade_size": "0.05"}


@pytest.mark.parametrize("item", ["min_profit_bps", "min_profit_bps=", "symbols=BTC/USDT", "=5"])
def test_a_malformed_grid_axis_is_refused(item: str) -> None:
    with pytest.raises(ValueError, match=r"grid axis|unknown strategy parameter"):
        parse_grid([item])


def test_walk_forward_windows_step_by_the_test_window_and_never_pass_the_end() -> None:
    start = datetime(2023, 3, 1, tzinfo=UTC)

    windows = rolling_windows(start, start + timedelta(days=10), timedelta(days=3), timedelta(days=2))

    assert [(w.train_from.day, w.test_from.day, w.test_to.day) for w in windows] == [
        (1, 4, 6),
        (3, 6, 8),
        (5, 8, 10),
    ]
    [split] = split_window(start, start + timedelta(days=10), 0.7)
    assert split.test_from == start + timedelta(days=7)
