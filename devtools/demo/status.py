"""What the demo reports: counts of this run's quotes, opportunities, trades and PnL, read from the
database that every demo process writes to, and the change in what the venues hold, by which the
reported PnL can be checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Sum

from trading.core import ledger
from trading.core.numbers import plain
from trading.core.types import split_symbol
from trading.models import Balance, Opportunity, Quote, Trade


@dataclass(frozen=True)
class Counts:
    quotes: int
    opportunities: int
    rejected: int
    trades: int
    pnl: Decimal
    below_expected: int = 0  # trades that realized less than they expected (books shared, moved)


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
        below_expected=trades.filter(realized_pnl__lt=F("expected_pnl")).count(),
    )


def holdings() -> dict[str, Decimal]:
    """What the venues hold of each asset together, free and held back alike, by the ledger."""
    rows = Balance.objects.values_list("asset").annotate(total=Sum(F("free") + F("locked")))
    return {asset: Decimal(total) for asset, total in rows}


@dataclass(frozen=True)
class HoldingsChange:
    """The change in the venues' holdings over the run, per asset, and its value in `currency`
    with each other asset at the mid of this run's latest trade on it (None: no trade, no mid)."""

    change: dict[str, Decimal]
    currency: str
    value: Decimal | None


def holdings_change(before: dict[str, Decimal], start: datetime, currency: str) -> HoldingsChange:
    after = holdings()
    change = {asset: after.get(asset, Decimal(0)) - before.get(asset, Decimal(0)) for asset in before | after}
    marks = {
        split_symbol(trade.symbol)[0]: trade.mark_price
        for trade in Trade.objects.filter(created_at__gte=start).order_by("created_at")
        if trade.mark_price is not None
    }
    valuation = ledger.value(change, marks, currency)
    return HoldingsChange(change, currency, None if valuation.unvalued else valuation.pnl)


def status_line(elapsed_s: float, now: Counts, before: Counts | None, interval_s: float) -> str:
    """One line: quotes per second since `before` (over `interval_s`), then the running totals."""
    fresh = now.quotes - (before.quotes if before else 0)
    rate = fresh / interval_s if interval_s > 0 else 0.0
    return (
        f"[{elapsed_s:6.0f}s] quotes {now.quotes} ({rate:.1f}/s) | "
        f"opportunities {now.opportunities} ({now.rejected} rejected) | "
        f"trades {now.trades} | pnl {now.pnl:+.2f}"
    )


def holdings_line(held: HoldingsChange) -> str:
    """The change in holdings, asset by asset, and what it is worth at the mid."""
    assets = ", ".join(f"{asset} {amount.normalize():+f}" for asset, amount in sorted(held.change.items()))
    worth = "no mid to value it at" if held.value is None else f"{held.value:+.2f} {held.currency} at the mid"
    return f"venues' holdings changed by {assets or 'nothing'}: {worth}"


def summary(counts: Counts, held: HoldingsChange | None, seconds: float, restarts: dict[str, int]) -> str:
    """The closing JSON line: counts of the run, PnL as an exact string, the change in holdings
    (exact, per asset) and its value at the mid, restarts per process."""
    return json.dumps(
        {
            "quotes": counts.quotes,
            "opportunities": counts.opportunities,
            "rejected": counts.rejected,
            "trades": counts.trades,
            "below_expected": counts.below_expected,
            "pnl": plain(counts.pnl),
            "holdings_change": {a: plain(v) for a, v in sorted(held.change.items())} if held else None,
            "holdings_value": plain(held.value) if held and held.value is not None else None,
            "seconds": round(seconds, 1),
            "restarts": restarts,
        }
    )
