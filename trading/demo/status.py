"""What the demo reports: counts of this run's quotes, opportunities, trades and PnL, read from the
database that every demo process writes to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from trading.models import Opportunity, Quote, Trade


@dataclass(frozen=True)
class Counts:
    quotes: int
    opportunities: int
    rejected: int
    trades: int
    pnl: Decimal


def counts_since(start: datetime) -> Counts:
    """This run's figures: rows stamped at or after `start`."""
    opportunities = Opportunity.objects.filter(detected_at__gte=start)
    trades = Trade.objects.filter(created_at__gte=start)
    pnl = trades.aggregate(total=Sum("realized_pnl"))["total"]
    return Counts(
        quotes=Quote.objects.filter(received_at__gte=start).count(),
        opportunities=opportunities.count(),
        rejected=opportunities.filter(status=Opportunity.Status.REJECTED).count(),
        trades=trades.count(),
        pnl=Decimal(pnl) if pnl is not None else Decimal(0),
    )


def money(amount: Decimal) -> str:
    """Exact, without exponent or trailing zeros: Decimal('1.500000000000') -> '1.5'."""
    return format(amount.normalize(), "f")


def status_line(elapsed_s: float, now: Counts, before: Counts | None, interval_s: float) -> str:
    """One line: quotes per second since `before` (over `interval_s`), then the running totals."""
    fresh = now.quotes - (before.quotes if before else 0)
    rate = fresh / interval_s if interval_s > 0 else 0.0
    return (
        f"[{elapsed_s:6.0f}s] quotes {now.quotes} ({rate:.1f}/s) | "
        f"opportunities {now.opportunities} ({now.rejected} rejected) | "
        f"trades {now.trades} | pnl {now.pnl:+.2f}"
    )


def summary(counts: Counts, seconds: float, restarts: dict[str, int]) -> str:
    """The closing JSON line: counts of the run, PnL as an exact string, restarts per process."""
    return json.dumps(
        {
            "quotes": counts.quotes,
            "opportunities": counts.opportunities,
            "rejected": counts.rejected,
            "trades": counts.trades,
            "pnl": money(counts.pnl),
            "seconds": round(seconds, 1),
            "restarts": restarts,
        }
    )
