"""The admin dashboard: today's PnL and trades, open alerts, venue status and freshness, a PnL chart.

Served at /admin/dashboard/ through the admin site, so only active staff users see it. The chart
is an inline SVG drawn here: no JavaScript, nothing fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from trading import monitoring
from trading.clock import now_ms
from trading.models import Alert, Trade
from trading.pubsub import connect

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 640, 200, 10
RECENT_TRADES = 20


@dataclass(frozen=True)
class Chart:
    """Cumulative realized PnL as SVG coordinates, and where zero sits."""

    points: str
    zero_y: float
    low: Decimal
    high: Decimal


def cumulative(pnls: Sequence[Decimal]) -> list[Decimal]:
    """Running totals, starting from zero before the first trade."""
    totals = [Decimal(0)]
    for pnl in pnls:
        totals.append(totals[-1] + pnl)
    return totals


def pnl_chart(pnls: Sequence[Decimal]) -> Chart:
    """Scale the running PnL into the chart box: trades evenly spaced left to right, the lowest
    total at the bottom, the highest (or zero, whichever is higher) at the top."""
    totals = cumulative(pnls)
    low, high = min(totals), max(totals)
    span = (high - low) or Decimal(1)
    step = (CHART_WIDTH - 2 * CHART_PAD) / max(len(totals) - 1, 1)

    def y(value: Decimal) -> float:
        return round(CHART_PAD + float((high - value) / span) * (CHART_HEIGHT - 2 * CHART_PAD), 1)

    points = " ".join(f"{round(CHART_PAD + i * step, 1)},{y(total)}" for i, total in enumerate(totals))
    return Chart(points=points, zero_y=y(Decimal(0)), low=low, high=high)


def venue_rows() -> list[dict[str, object]]:
    """Each enabled venue's status and, per symbol, the age of its latest book in seconds."""
    with connect() as client:
        freshness = monitoring.venue_freshness(client, now_ms())
    return [
        {
            "venue": fresh.venue,
            "stale": bool(fresh.stale),
            "ages": [
                (symbol, None if age is None else age / 1000) for symbol, age in sorted(fresh.ages_ms.items())
            ],
        }
        for fresh in freshness
    ]


def view(request: HttpRequest) -> HttpResponse:
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    today = Trade.objects.filter(created_at__gte=start)
    totals = today.aggregate(realized=Sum("realized_pnl"), expected=Sum("expected_pnl"), fees=Sum("fees"))
    pnls = list(today.order_by("created_at").values_list("realized_pnl", flat=True))
    context = {
        "title": "Trading dashboard",
        "day": start.date(),
        "trade_count": len(pnls),
        "realized": totals["realized"] or Decimal(0),
        "expected": totals["expected"] or Decimal(0),
        "fees": totals["fees"] or Decimal(0),
        "trades": today.select_related("buy_venue", "sell_venue")[:RECENT_TRADES],
        # "critical" sorts before "warning".
        "alerts": Alert.objects.filter(resolved_at__isnull=True).order_by("severity", "first_seen"),
        "venues": venue_rows(),
        "chart": pnl_chart(pnls),
        "chart_size": (CHART_WIDTH, CHART_HEIGHT),
    }
    return TemplateResponse(request, "admin/trading/dashboard.html", context)
