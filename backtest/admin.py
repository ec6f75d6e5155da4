"""Backtest runs in the admin: read-only records with their metrics, trades and PNG report."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backtest.models import BacktestRun, BacktestTrade

log = logging.getLogger(__name__)

# Shown inline on a run's page; the rest are in the trades list, filtered by run.
INLINE_TRADES = 200


class ReadOnly(admin.ModelAdmin):
    """Backtest records are written by the backtest command only."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class TradeInline(admin.TabularInline):
    model = BacktestTrade
    fields = ("decided_at", "buy_venue", "sell_venue", "amount", "status", "fees", "net_pnl")
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = True
    verbose_name_plural = f"trades (first {INLINE_TRADES})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[BacktestTrade]:
        # Sliced querysets cannot be filtered further: limit by the ids of the first trades instead.
        queryset = super().get_queryset(request)
        return queryset.filter(pk__in=queryset.order_by("decided_at", "pk").values("pk")[:INLINE_TRADES])

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(BacktestRun)
class BacktestRunAdmin(ReadOnly):
    list_display = (
        "id",
        "kind",
        "status",
        "symbol",
        "data_from",
        "data_to",
        "trades",
        "net_pnl",
        "created_at",
    )
    list_filter = ("kind", "status", "symbol")
    fields = (
        "kind",
        "status",
        "symbol",
        "venues",
        "data_from",
        "data_to",
        "quotes",
        "code_version",
        "promoted_version",
        "parameters_view",
        "metrics_view",
        "report",
        "error",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields
    inlines = (TradeInline,)

    @admin.display(description="trades")
    def trades(self, run: BacktestRun) -> object:
        return run.metrics.get("trades", "-")

    @admin.display(description="net PnL")
    def net_pnl(self, run: BacktestRun) -> object:
        return run.metrics.get("net_pnl", "-")

    @admin.display(description="parameters")
    def parameters_view(self, run: BacktestRun) -> SafeString:
        return _pretty(run.parameters)

    @admin.display(description="metrics")
    def metrics_view(self, run: BacktestRun) -> SafeString:
        return _pretty(run.metrics)

    @admin.display(description="report")
    def report(self, run: BacktestRun) -> SafeString | str:
        """The PNG inline, read from where the run wrote it."""
        if not run.plot:
            return "-"
        try:
            data = Path(run.plot).read_bytes()
        except OSError as exc:
            log.warning("report of backtest %s unreadable: %s", run.pk, exc)
            return f"{run.plot} (not readable here: {exc.strerror})"
        encoded = base64.b64encode(data).decode()
        return format_html(
            '<img src="data:image/png;base64,{}" alt="{}" style="max-width:100%">', encoded, run.plot
        )


@admin.register(BacktestTrade)
class BacktestTradeAdmin(ReadOnly):
    list_display = ("run", "decided_at", "buy_venue", "sell_venue", "amount", "status", "fees", "net_pnl")
    list_filter = ("status", "run")
    list_select_related = ("run",)


def _pretty(data: object) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(data, indent=2, sort_keys=True))
