"""The PNG report of a replay: equity curve, the cross-venue gap with taken trades marked, and
each venue's base inventory over time. Drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a server has no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from backtest.engine import Result
from backtest.metrics import equity_curve


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def write_report(result: Result, start: Mapping[str, Decimal], path: Path, title: str) -> Path:
    """Draw the report of `result` to `path` (a PNG); `start` is each venue's base at the start."""
    figure, (equity, gap, inventory) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    try:
        figure.suptitle(title)
        _equity(equity, result)
        _gap(gap, result)
        _inventory(inventory, result, start)
        inventory.set_xlabel("time (UTC)")
        figure.autofmt_xdate()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=90)
    finally:
        plt.close(figure)
    return path


def _equity(axes: Axes, result: Result) -> None:
    curve = equity_curve(result.trades)
    first = [(_time(result.first_ms), 0.0)] if result.first_ms is not None else []
    points = first + [(_time(ms), float(equity)) for ms, equity in curve]
    if points:
        times, values = zip(*points, strict=True)
        axes.step(times, values, where="post", color="tab:green")
    axes.set_ylabel(f"net PnL ({result.symbol.split('/')[1]})")
    axes.set_title("Equity")
    axes.grid(alpha=0.3)


def _gap(axes: Axes, result: Result) -> None:
    if result.gap_minutes:
        minutes = np.concatenate(result.gap_minutes)
        widest = np.concatenate(result.gap_widest)
        few = len(minutes) < 50  # a line needs points to be seen: mark them when there are few
        times = [_time(int(ms)) for ms in minutes]
        # matplotlib plots datetimes through its date units; its stubs take only numbers and arrays.
        axes.plot(times, widest, lw=0.7, marker="." if few else None, label="widest gap in the minute")  # type: ignore[arg-type]
    trades = result.trades
    if trades:
        axes.scatter(
            [_time(t.decided_ms) for t in trades],  # type: ignore[arg-type]  # datetimes, as above
            [float(t.sell_price - t.buy_price) for t in trades],
            color=["tab:red" if not t.filled else "tab:orange" for t in trades],
            s=14,
            zorder=3,
            label="taken (red: a leg missed)",
        )
    axes.axhline(0, color="grey", lw=0.6)
    axes.set_ylabel("best bid - other ask")
    axes.set_title("Cross-venue gap")
    axes.legend(loc="upper right", fontsize="small")
    axes.grid(alpha=0.3)


def _inventory(axes: Axes, result: Result, start: Mapping[str, Decimal]) -> None:
    base = result.symbol.split("/")[0]
    first = _time(result.first_ms) if result.first_ms is not None else None
    for venue in start:
        points = [(first, float(start[venue]))] if first is not None else []
        points += [(_time(ms), float(balances[venue])) for ms, balances in result.inventory]
        if points:
            times, values = zip(*points, strict=True)
            axes.step(times, values, where="post", label=venue)
    axes.set_ylabel(f"{base} free")
    axes.set_title("Inventory")
    axes.legend(loc="upper right", fontsize="small")
    axes.grid(alpha=0.3)
