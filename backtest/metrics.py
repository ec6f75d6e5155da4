"""The figures a trader judges a replay by, from its Result.

Money is computed in Decimal and stored as exact decimal strings (JSON has no decimal type);
counts are integers, ratios floats.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from statistics import fmean, stdev
from typing import Any

from backtest.engine import Result, SeenOpportunity, SimTrade
from trading.core.risk import max_drawdown
from trading.core.strategy import Reason
from trading.core.types import ZERO

HOUR_MS = 3_600_000
HOURS_PER_YEAR = 24 * 365

# Metrics a sweep can rank by; higher is better for each of them except max_drawdown.
RANKABLE = ("net_pnl", "gross_pnl", "sharpe_hourly", "win_rate", "trades", "max_drawdown")


def equity_curve(trades: Sequence[SimTrade]) -> list[tuple[int, Decimal]]:
    """Cumulative net PnL after each trade settles: (epoch ms, equity)."""
    equity, curve = ZERO, []
    for trade in sorted(trades, key=lambda t: t.settled_ms):
        equity += trade.net_pnl
        curve.append((trade.settled_ms, equity))
    return curve


def hourly_pnl(trades: Sequence[SimTrade], first_ms: int, last_ms: int) -> list[Decimal]:
    """Net PnL of each hour from the first quote's hour to the last's, quiet hours included."""
    start = first_ms // HOUR_MS
    hours = [ZERO] * (last_ms // HOUR_MS - start + 1)
    for trade in trades:
        hour = min(max(trade.settled_ms // HOUR_MS - start, 0), len(hours) - 1)
        hours[hour] += trade.net_pnl
    return hours


def sharpe(period_pnl: Sequence[Decimal], periods_per_year: int = HOURS_PER_YEAR) -> float | None:
    """Mean over standard deviation of per-period PnL, annualized; None when it is undefined
    (fewer than two periods, or no variation)."""
    if len(period_pnl) < 2:
        return None
    values = [float(pnl) for pnl in period_pnl]
    spread = stdev(values)
    if spread == 0:
        return None
    return fmean(values) / spread * math.sqrt(periods_per_year)


def counted_opportunities(seen: Sequence[SeenOpportunity]) -> list[SeenOpportunity]:
    """The opportunities a trader counts, each once: those past the profit bar after fees (a
    crossing only has an ask under a bid), a rejected one that became tradeable counted as the
    accepted one that took it over."""
    return [o for o in seen if o.reason != Reason.BELOW_MIN_PROFIT and not o.superseded]


def summarize(result: Result) -> dict[str, Any]:
    """Every metric of the run, JSON-ready."""
    trades = result.trades
    net = sum((t.net_pnl for t in trades), ZERO)
    opportunities = counted_opportunities(result.opportunities)
    lifetimes = [o.lifetime_ms for o in opportunities if not o.fleeting]
    hours = hourly_pnl(trades, result.first_ms or 0, result.last_ms or 0) if result.rows else []
    ratio = sharpe(hours)
    return {
        "quotes": result.rows,
        "trades": len(trades),
        "trades_missed": sum(1 for t in trades if not t.filled),
        "outcomes": dict(sorted(Counter(str(t.outcome) for t in trades).items())),
        "gross_pnl": str(sum((t.gross_pnl for t in trades), ZERO)),
        "fees": str(sum((t.fees for t in trades), ZERO)),
        "net_pnl": str(net),
        "win_rate": round(sum(1 for t in trades if t.net_pnl > 0) / len(trades), 4) if trades else None,
        "max_drawdown": str(max_drawdown(t.net_pnl for t in sorted(trades, key=lambda t: t.settled_ms))),
        "sharpe_hourly": None if ratio is None else round(ratio, 4),
        "crossings": result.crossings,
        "opportunities_seen": len(opportunities),
        "opportunities_fleeting": len(opportunities) - len(lifetimes),
        "opportunities_taken": len(trades),
        "rejected": dict(sorted(result.rejected.items())),
        "avg_opportunity_ms": round(fmean(lifetimes), 1) if lifetimes else None,  # fleeting ones aside
        "inventory": {
            venue: {asset: str(amount) for asset, amount in sorted(balances.items())}
            for venue, balances in sorted(result.balances.items())
        },
    }


def score(metrics: dict[str, Any], metric: str) -> float:
    """`metric` of a run as a number where higher is better (a missing value ranks last)."""
    value = metrics.get(metric)
    if value is None:
        return -math.inf
    number = float(Decimal(str(value)))
    return -number if metric == "max_drawdown" else number
