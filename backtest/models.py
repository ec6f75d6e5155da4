"""Backtest records: each run with its parameters and metrics, and the trades it simulated."""

from __future__ import annotations

from django.db import models

from trading.models import MONEY


class BacktestRun(models.Model):
    class Kind(models.TextChoices):
        SINGLE = "single", "single run"
        SWEEP = "sweep", "parameter sweep"

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    kind = models.CharField(max_length=6, choices=Kind.choices, default=Kind.SINGLE)
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.RUNNING)
    symbol = models.CharField(max_length=20)
    venues = models.JSONField(default=list, help_text="Venue names replayed")
    parameters = models.JSONField(
        default=dict, help_text="Strategy parameters, fees, latencies, starting balances (a sweep: its grid)"
    )
    data_from = models.DateTimeField(null=True, blank=True)
    data_to = models.DateTimeField(null=True, blank=True)
    quotes = models.BigIntegerField(default=0, help_text="Quotes replayed")
    code_version = models.CharField(max_length=64, help_text="git commit, else the package version")
    metrics = models.JSONField(default=dict, blank=True)
    plot = models.CharField(max_length=500, blank=True, help_text="Path of the PNG report")
    error = models.TextField(blank=True)
    promoted_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="Strategy version this sweep's winner became"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"backtest #{self.pk} {self.symbol} {self.status}"


class BacktestTrade(models.Model):
    """One simulated arbitrage: both legs as they filled at arrival."""

    class Status(models.TextChoices):
        FILLED = "filled", "both legs filled"
        MISSED = "missed", "a leg fell short"

    run = models.ForeignKey(BacktestRun, on_delete=models.CASCADE, related_name="trades")
    decided_at = models.DateTimeField()
    settled_at = models.DateTimeField()
    buy_venue = models.CharField(max_length=40)
    sell_venue = models.CharField(max_length=40)
    amount = models.DecimalField(**MONEY)
    bought = models.DecimalField(**MONEY)
    sold = models.DecimalField(**MONEY)
    buy_price = models.DecimalField(**MONEY, null=True, help_text="Average price filled")
    sell_price = models.DecimalField(**MONEY, null=True, help_text="Average price filled")
    fees = models.DecimalField(**MONEY)
    expected_pnl = models.DecimalField(**MONEY)
    gross_pnl = models.DecimalField(**MONEY)
    net_pnl = models.DecimalField(**MONEY)
    status = models.CharField(max_length=6, choices=Status.choices)

    class Meta:
        ordering = ["run", "decided_at", "pk"]

    def __str__(self) -> str:
        return f"{self.buy_venue}->{self.sell_venue} {self.amount} {self.net_pnl:+f}"
