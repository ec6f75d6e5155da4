"""The Django admin: trade review, the decision record, venues and strategy versions.

Trades, opportunities, orders and balances are records written by the trading path; here they are
read and reviewed, never added, edited or deleted (a trade's only editable field is `reviewed`).
Venues, strategy configs and risk limits are the operator's settings and are editable; the kill
switch changes only through its trip and re-arm actions.

Quotes are deliberately not registered: the table is append-only and holds millions of rows, and a
change list always counts its rows (the paginator runs COUNT(*) even with show_full_result_count
off). Recorded quotes are examined through the backtest instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db import models, transaction
from django.db.models import F, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from trading import lifecycle, risk_controls, strategies
from trading.core.numbers import plain
from trading.models import (
    Alert,
    Balance,
    KillSwitch,
    Opportunity,
    Order,
    RiskLimits,
    StrategyConfig,
    Trade,
    Venue,
)

admin.site.site_header = "Arbitrage administration"
admin.site.site_title = "Arbitrage"

# The legs of a trade, as shown on both the trade and the opportunity pages.
LEG_FIELDS = (
    "client_order_id",
    "role",
    "attempt",
    "venue",
    "side",
    "status",
    "price",
    "amount",
    "filled",
    "average_price",
    "fee",
)


def decimal_column(field: str, description: str | None = None) -> Callable[[models.Model], str]:
    """A change-list column showing `field` as a plain decimal, sortable by that field."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(obj: models.Model) -> str:
        return plain(getattr(obj, field))

    column.__name__ = field  # names the column's CSS class
    return column


def fieldset_fields(fieldsets: Iterable[tuple[object, Mapping[str, Any]]]) -> list[str]:
    """The names of the fields on a change page laid out by `fieldsets`, in order (those grouped
    on one line included)."""
    return [
        name
        for _, options in fieldsets
        for line in options["fields"]
        for name in ((line,) if isinstance(line, str) else line)
    ]


class RecordAdmin(admin.ModelAdmin):
    """A record kept for review: viewable, never added, changed or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


def leg_cell(order: Order, field: str) -> str:
    value = getattr(order, field)
    return plain(value) if isinstance(value, Decimal) or value is None else str(value)


def leg_row(order: Order) -> SafeString:
    link = format_html(
        '<a href="{}">{}</a>', reverse("admin:trading_order_change", args=[order.pk]), order.client_order_id
    )
    cells = format_html_join("", "<td>{}</td>", ((leg_cell(order, f),) for f in LEG_FIELDS[1:]))
    return format_html("<tr><td>{}</td>{}</tr>", link, cells)


def legs_table(orders: Iterable[Order]) -> SafeString:
    """An HTML table of the given legs, each linked to its order page."""
    labels = {field.name: field.verbose_name for field in Order._meta.concrete_fields}
    header = format_html_join("", "<th>{}</th>", ((labels[f],) for f in LEG_FIELDS))
    rows = format_html_join("", "{}", ((leg_row(order),) for order in orders))
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, rows)


@admin.register(Trade)
class TradeAdmin(admin.ModelAdmin):
    # A static method, so the change view can name it in its fieldsets like a field.
    slippage = staticmethod(decimal_column("slippage", "slippage (realized - expected)"))
    list_display = (
        "id",
        "created_at",
        "symbol",
        "buy_venue",
        "sell_venue",
        decimal_column("amount"),
        decimal_column("expected_pnl", "expected PnL"),
        decimal_column("realized_pnl", "realized PnL"),
        "slippage",
        decimal_column("fees"),
        "outcome",
        "mode",
        "reviewed",
    )
    list_select_related = ("buy_venue", "sell_venue")
    list_filter = ("outcome", "buy_venue", "sell_venue", "mode", "reviewed")
    date_hierarchy = "created_at"
    search_fields = (
        "symbol",
        "buy_venue__name",
        "sell_venue__name",
        "opportunity__id__exact",
        "opportunity__orders__client_order_id",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "opportunity",
                    "outcome",
                    "symbol",
                    "buy_venue",
                    "sell_venue",
                    "amount",
                    "mode",
                    "created_at",
                )
            },
        ),
        ("PnL (net of fees)", {"fields": ("expected_pnl", "realized_pnl", "slippage", "fees")}),
        (
            "Change in holdings",
            {"fields": ("base_flow", "quote_flow", "other_flows", "mark_price", "unvalued")},
        ),
        ("Legs", {"fields": ("legs",)}),
        ("Review", {"fields": ("reviewed",)}),
    )
    # Everything on the page but `reviewed` is the record's, not the reviewer's.
    readonly_fields = tuple(name for name in fieldset_fields(fieldsets) if name != "reviewed")
    actions = ("mark_reviewed",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Trade]:
        trades: QuerySet[Trade] = super().get_queryset(request)
        return trades.annotate(slippage=F("realized_pnl") - F("expected_pnl"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # trades are written by the trade worker only

    def has_delete_permission(self, request: HttpRequest, obj: Trade | None = None) -> bool:
        return False

    @admin.display(description="legs")
    def legs(self, trade: Trade) -> SafeString | str:
        orders = trade.opportunity.orders.select_related("venue").order_by("pk")
        return legs_table(orders) if orders else "no legs recorded"

    @admin.action(description="Mark selected trades as reviewed", permissions=["change"])
    def mark_reviewed(self, request: HttpRequest, queryset: QuerySet[Trade]) -> None:
        count = queryset.filter(reviewed=False).update(reviewed=True)
        self.message_user(request, f"{count} trade(s) marked as reviewed.", messages.SUCCESS)


class LegInline(admin.TabularInline):
    model = Order
    fields = LEG_FIELDS
    readonly_fields = LEG_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name = "leg"

    def has_add_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


@admin.register(Opportunity)
class OpportunityAdmin(RecordAdmin):
    list_display = (
        "id",
        "detected_at",
        "symbol",
        "buy_venue",
        "sell_venue",
        decimal_column("amount"),
        decimal_column("expected_profit", "expected profit"),
        decimal_column("expected_bps", "bps"),
        "status",
        "reason",
        "mode",
        "ticks",
        "last_seen_at",
    )
    list_select_related = ("buy_venue", "sell_venue")
    list_filter = ("status", "mode", "reason", "buy_venue", "sell_venue")
    date_hierarchy = "detected_at"
    search_fields = ("symbol", "id__exact")
    # Rejected opportunities accumulate; count only the filtered rows, not the whole table too.
    show_full_result_count = False
    readonly_fields = ("trade_link",)
    inlines = (LegInline,)
    actions = ("closed_by_hand",)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return request.user.has_perm("trading.change_opportunity") and obj is None  # actions only

    @admin.action(description="Position closed by hand: mark the selected ones flat", permissions=["change"])
    def closed_by_hand(self, request: HttpRequest, queryset: QuerySet[Opportunity]) -> None:
        """Settlement gave up on these positions; a person closed them on the venue."""
        closed = [o for o in queryset if lifecycle.closed_by_hand(o, by=request.user.get_username())]
        self.message_user(
            request,
            f"{len(closed)} position(s) marked flat; reconciliation brings the balances in line.",
            messages.SUCCESS if closed else messages.WARNING,
        )

    @admin.display(description="trade")
    def trade_link(self, opportunity: Opportunity) -> SafeString | str:
        trade = Trade.objects.filter(opportunity=opportunity).first()
        if trade is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:trading_trade_change", args=[trade.pk]), trade
        )


@admin.register(Order)
class OrderAdmin(RecordAdmin):
    list_display = (
        "client_order_id",
        "created_at",
        "venue",
        "symbol",
        "role",
        "side",
        "status",
        decimal_column("price"),
        decimal_column("amount"),
        decimal_column("filled"),
        decimal_column("average_price", "average price"),
        decimal_column("fee"),
    )
    list_select_related = ("venue",)
    list_filter = ("venue", "role", "side", "status")
    search_fields = ("client_order_id", "venue_order_id")
    fields = (
        "opportunity",
        "venue",
        "symbol",
        "role",
        "attempt",
        "side",
        "client_order_id",
        "venue_order_id",
        "price",
        "amount",
        "filled",
        "average_price",
        "fee",
        "fees",
        "held",
        "status",
        "created_at",
        "updated_at",
        "venue_response",
    )
    readonly_fields = ("venue_response",)

    @admin.display(description="venue response")
    def venue_response(self, order: Order) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(order.raw, indent=2, sort_keys=True))


@admin.register(Venue)
class VenueAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "kind",
        "ccxt_id",
        "feed",
        "enabled",
        "status",
        "status_reason",
        "status_changed_at",
        decimal_column("taker_fee", "taker fee"),
        decimal_column("maker_fee", "maker fee"),
        "max_quote_age_ms",
    )
    list_filter = ("kind", "feed", "enabled", "status")
    # A URL typed without a scheme is taken as https: an exchange or sandbox, never plain http by accident.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "kind", "ccxt_id", "api_url", "enabled")}),
        ("Fees", {"fields": ("taker_fee", "maker_fee")}),
        ("Precision and limits", {"fields": ("amount_step", "min_amount", "min_cost", "max_notional")}),
        ("Quotes", {"fields": ("max_quote_age_ms",)}),
        ("Streaming (manage.py stream_prices)", {"fields": ("feed", "stream_url", "stream_stall_ms")}),
        (
            "Status (set by the collector)",
            {"fields": ("status", "status_reason", "status_changed_at")},
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Venue | None = None) -> tuple[str, ...]:
        status = ("status", "status_reason", "status_changed_at")
        # Renaming would orphan the venue's Redis sequences and strategy limits, which use the name.
        return status if obj is None else ("name", *status)

    def has_delete_permission(self, request: HttpRequest, obj: Venue | None = None) -> bool:
        # Deleting cascades to every recorded quote; a venue is retired by disabling it.
        return False


@admin.register(Balance)
class BalanceAdmin(RecordAdmin):
    list_display = ("venue", "asset", decimal_column("free"), decimal_column("locked"), "updated_at")
    list_select_related = ("venue",)
    list_filter = ("venue", "asset")


STRATEGY_PARAMETERS = (
    "symbols",
    "min_profit_bps",
    "trade_size",
    "slippage_bps",
    "max_quote_age_ms",
    "ttl_ms",
)


class StrategyConfigForm(forms.ModelForm):
    """The operator's fields of a version; what the strategy could not use is refused by the
    model's own validation (StrategyConfig.clean_fields), which the form runs."""

    class Meta:
        model = StrategyConfig
        fields = (*STRATEGY_PARAMETERS, "venue_limits", "note")


def announce_strategy(request: HttpRequest, version: int) -> None:
    """Publish control.strategy so running listeners reload the active version; tell the user
    when Redis could not be told (the change is saved all the same)."""
    warn_unannounced(request, version, strategies.announce_strategy(version))


def warn_unannounced(request: HttpRequest, version: int, announced: bool) -> None:
    if not announced:
        messages.warning(
            request,
            f"Version {version} is saved, but running listeners were not told (Redis unreachable); "
            "restart them to pick it up.",
        )


@admin.register(StrategyConfig)
class StrategyConfigAdmin(admin.ModelAdmin):
    form = StrategyConfigForm
    list_display = (
        "version",
        "active",
        "symbols",
        decimal_column("min_profit_bps", "min profit (bps)"),
        decimal_column("trade_size", "trade size"),
        decimal_column("slippage_bps", "slippage (bps)"),
        "max_quote_age_ms",
        "ttl_ms",
        "note",
        "created_at",
    )
    list_filter = ("active",)
    fieldsets = (
        (
            None,
            {
                "fields": ("version", "active", "note", "created_at"),
                "description": "New versions are numbered automatically and start inactive; "
                "switch versions with the “Activate this version” action. "
                "“Save as new” copies this version into a new one.",
            },
        ),
        ("Parameters", {"fields": STRATEGY_PARAMETERS}),
        ("Per-venue limits", {"fields": ("venue_limits",)}),
    )
    # Activation goes through the action only, which keeps exactly one version active.
    readonly_fields = ("version", "active", "created_at")
    save_as = True
    actions = ("activate",)

    def has_delete_permission(self, request: HttpRequest, obj: StrategyConfig | None = None) -> bool:
        return False  # opportunities record the version they were decided under

    def save_model(
        self, request: HttpRequest, obj: StrategyConfig, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            obj.version = strategies.next_version()
        super().save_model(request, obj, form, change)
        if obj.active:
            transaction.on_commit(partial(announce_strategy, request, obj.version))

    @admin.action(description="Activate this version", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[StrategyConfig]) -> None:
        configs = list(queryset[:2])
        if len(configs) != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        config = configs[0]
        strategies.activate_version(config, partial(warn_unannounced, request, config.version))
        self.message_user(request, f"Version {config.version} is now the active strategy.", messages.SUCCESS)


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("open", "open"), ("resolved", "resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Alert]) -> QuerySet[Alert]:
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Alert)
class AlertAdmin(RecordAdmin):
    """Alerts of the monitoring checks open and resolve by themselves; incidents (a hedged leg, a
    reconciliation difference) stay open until a person resolves them here."""

    list_display = ("subject", "severity", "key", "first_seen", "last_seen", "count", "resolved_at")
    list_filter = (OpenFilter, "severity")
    search_fields = ("key", "subject")
    date_hierarchy = "first_seen"
    actions = ("resolve",)

    @admin.action(description="Resolve the selected alerts (dealt with)")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        resolved = queryset.filter(resolved_at__isnull=True).update(resolved_at=timezone.now())
        self.message_user(request, f"{resolved} alert(s) resolved.", messages.SUCCESS)


@admin.register(RiskLimits)
class RiskLimitsAdmin(admin.ModelAdmin):
    """The one set of risk limits, edited in place; it cannot be added twice or deleted."""

    list_display = (
        "__str__",
        "max_trade_notional",
        "max_open_exposure",
        "daily_loss_limit",
        "pair_cooldown_seconds",
        "updated_at",
    )
    filter_horizontal = ("paused_venues",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        RiskLimits.current()  # the row exists from the first look, with the settings' defaults
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RiskLimits | None = None) -> bool:
        return False


class KillSwitchActionForm(ActionForm):
    reason = forms.CharField(required=False, max_length=200, help_text="Why (required to trip)")


@admin.register(KillSwitch)
class KillSwitchAdmin(RecordAdmin):
    """The kill switch: tripped and re-armed only through its actions, which record who and why."""

    list_display = ("__str__", "tripped_at", "tripped_by", "reason", "rearmed_at", "rearmed_by")
    action_form = KillSwitchActionForm
    actions = ("trip_switch", "rearm_switch")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        risk_controls.kill_switch()
        return super().changelist_view(request, extra_context)

    @admin.action(description="Trip: stop all new trades (give a reason)")
    def trip_switch(self, request: HttpRequest, queryset: QuerySet[KillSwitch]) -> None:
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(request, "Give a reason to trip the kill switch.", messages.ERROR)
            return
        switch = risk_controls.trip(reason, by=f"{request.user.get_username()} (admin)")
        self.message_user(request, f"Kill switch {risk_controls.describe(switch)}", messages.WARNING)

    @admin.action(description="Re-arm: let trading resume")
    def rearm_switch(self, request: HttpRequest, queryset: QuerySet[KillSwitch]) -> None:
        switch = risk_controls.rearm(request.user.get_username())
        self.message_user(request, f"Kill switch {risk_controls.describe(switch)}", messages.SUCCESS)
