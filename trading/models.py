"""The durable record: venues, quotes, strategy configs (and what makes one usable), opportunities,
orders, trades, balances."""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Collection
from decimal import Decimal, InvalidOperation
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q

from trading.core.types import split_symbol


class Digits(TypedDict):
    """A decimal column's size, as DecimalField takes it."""

    max_digits: int
    decimal_places: int


MONEY: Digits = {"max_digits": 28, "decimal_places": 12}
DEPLOYMENT_KEY_LENGTH = 6
# An opportunity's figures come from books that passed validation (prices and amounts below 1e16,
# down to 1e-12): its prices, fees and profit fit here (notionals up to 1e28), and its bps too.
WIDE_MONEY: Digits = {"max_digits": 40, "decimal_places": 12}
WIDE_BPS: Digits = {"max_digits": 38, "decimal_places": 4}


class Venue(models.Model):
    class Kind(models.TextChoices):
        CCXT = "ccxt", "ccxt exchange"
        SIMULATED = "simulated", "simulated venue"

    class Status(models.TextChoices):
        UP = "up"
        DOWN = "down"

    class Feed(models.TextChoices):
        POLL = "poll", "poll (REST)"
        STREAM = "stream", "stream (websocket; polled while the stream is down)"
        BOTH = "both", "stream, with polling as a cross-check"

    name = models.SlugField(max_length=40, unique=True, help_text="Our name for the venue")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.CCXT)
    ccxt_id = models.CharField(max_length=40, blank=True, help_text="ccxt exchange id, e.g. binance")
    api_url = models.URLField(
        blank=True, help_text="Overrides the venue's API root (an emulator or a sandbox)"
    )
    feed = models.CharField(
        max_length=6,
        choices=Feed.choices,
        default=Feed.POLL,
        help_text="How its books arrive: streams are ccxt venues' only (manage.py stream_prices)",
    )
    stream_url = models.CharField(
        max_length=200,
        blank=True,
        validators=[URLValidator(schemes=["ws", "wss"])],
        help_text="Overrides the venue's websocket root (ws:// or wss://); empty: ccxt's default",
    )
    stream_stall_ms = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A stream silent this long is stale and resynced; empty: STREAM_STALL_MS",
    )
    taker_fee = models.DecimalField(max_digits=8, decimal_places=6, default=Decimal("0.001"))
    maker_fee = models.DecimalField(max_digits=8, decimal_places=6, default=Decimal("0.001"))
    amount_step = models.DecimalField(max_digits=20, decimal_places=12, default=Decimal("0.00001"))
    min_amount = models.DecimalField(max_digits=20, decimal_places=12, default=Decimal("0"))
    min_cost = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal("0"))
    max_notional = models.DecimalField(
        max_digits=20,
        decimal_places=8,
        null=True,
        blank=True,
        help_text="Largest notional one leg may trade here (quote currency); empty for no limit",
    )
    enabled = models.BooleanField(default=True)
    price_tick = models.DecimalField(
        max_digits=20,
        decimal_places=12,
        null=True,
        blank=True,
        help_text="Prices are multiples of this on the venue (read from it in live trading); empty: unknown",
    )
    max_quote_age_ms = models.PositiveIntegerField(default=5_000)
    status = models.CharField(max_length=4, choices=Status.choices, default=Status.UP)
    status_reason = models.CharField(max_length=200, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.feed != Venue.Feed.POLL and self.kind != Venue.Kind.CCXT:
            raise ValidationError({"feed": "Only ccxt venues stream; a simulated venue is polled."})


class Quote(models.Model):
    """Append-only: one row per collected book, written in batches with COPY."""

    venue = models.ForeignKey(Venue, on_delete=models.CASCADE, related_name="+")
    symbol = models.CharField(max_length=20)
    bid = models.DecimalField(**MONEY)
    bid_size = models.DecimalField(**MONEY)
    ask = models.DecimalField(**MONEY)
    ask_size = models.DecimalField(**MONEY)
    depth = models.JSONField(help_text='{"bids": [[price, amount], ...], "asks": [...]}')
    venue_ts = models.DateTimeField(null=True)
    received_at = models.DateTimeField()
    seq = models.BigIntegerField()

    class Meta:
        # The BRIN index on received_at is created in a migration (PostgreSQL only).
        indexes = [models.Index(fields=["venue", "symbol", "seq"], name="quote_venue_symbol_seq")]

    def __str__(self) -> str:
        return f"{self.venue_id} {self.symbol} #{self.seq} {self.bid}/{self.ask}"


def validate_symbols(symbols: Any) -> None:
    """Raises ValidationError unless `symbols` is a non-empty list of BASE/QUOTE strings."""
    if not isinstance(symbols, list) or not symbols:
        raise ValidationError('A non-empty list of symbols, e.g. ["BTC/USDT"].')
    for symbol in symbols:
        try:
            split_symbol(symbol)
        except (TypeError, ValueError, AttributeError):
            raise ValidationError(f"{symbol!r} is not a symbol like BTC/USDT.") from None


def validate_venue_limit(venue: str, raw: Any) -> None:
    """Raises ValidationError unless `raw` is a positive, finite amount."""
    try:
        limit = Decimal(str(raw))
    except InvalidOperation:
        raise ValidationError(f"The limit for {venue} is not a number: {raw!r}.") from None
    if not limit.is_finite() or limit <= 0:
        raise ValidationError(f"The limit for {venue} must be positive, got {raw!r}.")


def validate_venue_limits(limits: Any) -> None:
    """Raises ValidationError unless `limits` maps known venue names to positive amounts."""
    if not isinstance(limits, dict):
        raise ValidationError('An object of venue name to notional, e.g. {"binance": "5000"}.')
    unknown = sorted(set(limits) - set(Venue.objects.filter(name__in=limits).values_list("name", flat=True)))
    if unknown:
        raise ValidationError(f"Unknown venue(s): {', '.join(unknown)}.")
    for venue, raw in limits.items():
        validate_venue_limit(venue, raw)


def validate_trade_size(size: Decimal) -> None:
    if size <= 0:
        raise ValidationError("The trade size must be positive.")


# What a StrategyConfig must hold for the strategy to use it, checked by `full_clean` (and so by
# every model form, the admin's among them) after Django's own checks of the field have passed.
STRATEGY_CHECKS: dict[str, Callable[[Any], None]] = {
    "symbols": validate_symbols,
    "trade_size": validate_trade_size,
    "venue_limits": validate_venue_limits,
}


class StrategyConfig(models.Model):
    """A versioned parameter set for the strategy; exactly one is active. `full_clean` refuses one
    the strategy could not use (STRATEGY_CHECKS)."""

    version = models.PositiveIntegerField(unique=True)
    active = models.BooleanField(default=False)
    symbols = models.JSONField(default=list, help_text='e.g. ["BTC/USDT"]')
    min_profit_bps = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("5"))
    trade_size = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal("0.01"))
    max_quote_age_ms = models.PositiveIntegerField(default=5_000)
    ttl_ms = models.PositiveIntegerField(default=3_000, help_text="An opportunity's time to live")
    max_book_skew_ms = models.PositiveIntegerField(
        default=1_500, help_text="How far apart in time the two books of a decision may be stamped"
    )
    slippage_bps = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        default=Decimal(0),
        help_text="How far past the book (in bps) each leg's limit price may reach if the book moves "
        "before the order lands; 0 sends at the last book level the amount reaches",
    )
    venue_limits = models.JSONField(
        default=dict, blank=True, help_text='Per-venue max notional, e.g. {"binance": "5000"}'
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_active_strategy")
        ]

    def __str__(self) -> str:
        return f"v{self.version}{' (active)' if self.active else ''}"

    def clean_fields(self, exclude: Collection[str] | None = None) -> None:
        """Django's checks of each field, then STRATEGY_CHECKS on each field that passed them and
        is not excluded. Raises one ValidationError naming every field that fails."""
        errors: dict[str, Any] = {}
        try:
            super().clean_fields(exclude)
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        for name, check in STRATEGY_CHECKS.items():
            if name in errors or name in (exclude or ()):
                continue
            try:
                check(getattr(self, name))
            except ValidationError as error:
                errors[name] = error.error_list
        if errors:
            raise ValidationError(errors)


class Opportunity(models.Model):
    """One tradeable (or rejected) crossing as the listener decided it, and what became of it;
    trading.lifecycle is the one place its status changes."""

    class Status(models.TextChoices):
        DETECTED = "detected"
        REJECTED = "rejected"
        DISPATCHED = "dispatched"
        EXECUTING = "executing"
        EXECUTED = "executed"
        EXPIRED = "expired"
        FAILED = "failed", "failed (flat)"
        ATTENTION = "attention", "needs attention (position open)"

    class Mode(models.TextChoices):
        PAPER = "paper"
        LIVE = "live"

    symbol = models.CharField(max_length=20)
    buy_venue = models.ForeignKey(Venue, on_delete=models.PROTECT, related_name="+")
    sell_venue = models.ForeignKey(Venue, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    buy_price = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    sell_price = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    buy_worst_price = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    sell_worst_price = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    expected_fees = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    expected_profit = models.DecimalField(**WIDE_MONEY, null=True, blank=True)
    expected_bps = models.DecimalField(**WIDE_BPS, null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, db_index=True)
    reason = models.CharField(max_length=200, blank=True)
    mode = models.CharField(
        max_length=5, choices=Mode.choices, default=Mode.PAPER, help_text="Decided with the opportunity"
    )
    strategy = models.ForeignKey(StrategyConfig, null=True, on_delete=models.SET_NULL, related_name="+")
    detected_at = models.DateTimeField(db_index=True)
    last_seen_at = models.DateTimeField()
    ticks = models.PositiveIntegerField(default=1, help_text="Listener ticks the gap persisted for")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-detected_at"]
        verbose_name_plural = "opportunities"

    def __str__(self) -> str:
        return f"#{self.pk} {self.symbol} {self.buy_venue_id}->{self.sell_venue_id} {self.status}"


class Order(models.Model):
    class Side(models.TextChoices):
        BUY = "buy"
        SELL = "sell"

    class Status(models.TextChoices):
        NEW = "new"
        OPEN = "open"
        FILLED = "filled"
        PARTIAL = "partial"
        CANCELED = "canceled"
        REJECTED = "rejected"

    class Role(models.TextChoices):
        BUY = "buy", "buy leg"
        SELL = "sell", "sell leg"
        HEDGE = "hedge"

    opportunity = models.ForeignKey(Opportunity, on_delete=models.PROTECT, related_name="orders")
    role = models.CharField(max_length=5, choices=Role.choices)
    attempt = models.PositiveSmallIntegerField(default=0, help_text="0 for the first order, then retries")
    venue = models.ForeignKey(Venue, on_delete=models.PROTECT, related_name="+")
    symbol = models.CharField(max_length=20)
    side = models.CharField(max_length=4, choices=Side.choices)
    client_order_id = models.CharField(max_length=64, unique=True)
    venue_order_id = models.CharField(max_length=64, blank=True)
    price = models.DecimalField(**MONEY, help_text="Limit (guard) price")
    amount = models.DecimalField(**MONEY)
    filled = models.DecimalField(**MONEY, default=Decimal(0))
    average_price = models.DecimalField(**MONEY, null=True, blank=True)
    cost = models.DecimalField(
        **MONEY, default=Decimal(0), help_text="What the fills came to in the quote currency (before fees)"
    )
    fee = models.DecimalField(
        **MONEY,
        null=True,
        default=Decimal(0),
        help_text="The fees' value in the quote currency; empty: unknown",
    )
    fees = models.JSONField(
        default=list, blank=True, help_text='The fees as the venue charged them: [["BNB", "0.0021"], ...]'
    )
    held = models.DecimalField(
        **MONEY,
        default=Decimal(0),
        help_text="Funds locked for the order until it finishes: quote for a buy (at the limit price, "
        "fee included), base for a sell",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.NEW)
    raw = models.JSONField(default=dict, blank=True, help_text="The venue's response")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["opportunity", "role", "attempt"], name="one_order_per_attempt")
        ]

    def __str__(self) -> str:
        return self.client_order_id

    @property
    def finished(self) -> bool:
        """The venue is done with the order: nothing more will fill."""
        return self.status not in (Order.Status.NEW, Order.Status.OPEN)


class Trade(models.Model):
    """What an opportunity's orders did to holdings, matched or not: the one record of realized
    cash flow that PnL, the daily loss limit, the dashboard and the summaries read.

    `base_flow` and `quote_flow` are the changes in holdings across venues (fees included in the
    asset each was charged in; `other_flows` for fees in a third asset), and `realized_pnl` is
    their value at `mark_price` (the base's mid when settled) and the third assets' mids.
    """

    class Outcome(models.TextChoices):
        MATCHED = "matched", "both legs filled"
        PARTIAL = "partial", "both legs filled less"
        HEDGED = "hedged", "one-sided part hedged"
        OPEN = "open", "position left open"

    opportunity = models.OneToOneField(Opportunity, on_delete=models.PROTECT, related_name="trade")
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.MATCHED)
    symbol = models.CharField(max_length=20)
    buy_venue = models.ForeignKey(Venue, on_delete=models.PROTECT, related_name="+")
    sell_venue = models.ForeignKey(Venue, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(**MONEY, help_text="Matched: bought and sold alike")
    expected_pnl = models.DecimalField(**MONEY)
    realized_pnl = models.DecimalField(**MONEY)
    fees = models.DecimalField(**MONEY)
    base_flow = models.DecimalField(**MONEY, default=Decimal(0))
    quote_flow = models.DecimalField(**MONEY, default=Decimal(0))
    other_flows = models.JSONField(
        default=dict, blank=True, help_text='Fees in other assets: {"BNB": "-0.02"}'
    )
    mark_price = models.DecimalField(**MONEY, null=True, blank=True, help_text="What the base was valued at")
    unvalued = models.CharField(
        max_length=100, blank=True, help_text="Assets without a price, left out of the PnL (alerted)"
    )
    mode = models.CharField(max_length=5, default="paper")
    reviewed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"trade #{self.pk} {self.symbol} {self.realized_pnl:+f}"


class Balance(models.Model):
    venue = models.ForeignKey(Venue, on_delete=models.CASCADE, related_name="balances")
    asset = models.CharField(max_length=12)
    free = models.DecimalField(**MONEY, default=Decimal(0))
    locked = models.DecimalField(**MONEY, default=Decimal(0))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["venue", "asset"], name="one_balance_per_asset")]
        ordering = ["venue", "asset"]

    def __str__(self) -> str:
        return f"{self.venue_id} {self.asset} {self.free}"


class Alert(models.Model):
    """One incident of a monitored condition, from the check that first saw it until it cleared.

    `key` names the condition stably ("venue_stale:binance"); at most one alert per key is open.
    """

    class Severity(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"

    key = models.CharField(max_length=100, db_index=True)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    subject = models.CharField(max_length=200)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveIntegerField(default=1, help_text="Checks that saw the condition")
    clear_since = models.DateTimeField(
        null=True, blank=True, help_text="When the condition was first seen clear; resolves later"
    )
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-first_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["key"], condition=Q(resolved_at__isnull=True), name="one_open_alert"
            )
        ]

    def __str__(self) -> str:
        return f"{self.severity}: {self.subject}{'' if self.resolved_at is None else ' (resolved)'}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class RiskLimits(models.Model):
    """The risk limits every trade is checked against. One row (pk 1), created from the settings'
    defaults the first time it is read, then edited in admin."""

    max_trade_notional = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Largest notional one trade may put at stake; empty for none",
    )
    max_open_exposure = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Cap on open exposure per venue and asset (quote currency); empty for none",
    )
    daily_loss_limit = models.DecimalField(
        **MONEY, help_text="Today's realized loss that trips the kill switch (quote currency)"
    )
    pair_cooldown_seconds = models.PositiveIntegerField(
        default=0, help_text="No new trade on a venue pair within this many seconds of its last one"
    )
    paused_venues = models.ManyToManyField(
        Venue, blank=True, related_name="+", help_text="These venues trade nothing (they still quote)"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "risk limits"

    def __str__(self) -> str:
        return "risk limits"

    @classmethod
    def current(cls) -> RiskLimits:
        limits, created = cls.objects.get_or_create(
            pk=1,
            defaults={
                "max_trade_notional": settings.RISK_MAX_TRADE_NOTIONAL,
                "max_open_exposure": settings.RISK_MAX_OPEN_EXPOSURE,
                "daily_loss_limit": Decimal(settings.DAILY_LOSS_LIMIT),
                "pair_cooldown_seconds": settings.RISK_PAIR_COOLDOWN_SECONDS,
            },
        )
        if created:
            limits.refresh_from_db()  # the defaults as stored (Decimal), not the settings' strings
        return limits


class KillSwitch(models.Model):
    """The one kill switch (pk 1). While tripped no new trade starts anywhere; only a person
    re-arms it. The latest trip and re-arm are kept with who and why."""

    tripped_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    tripped_by = models.CharField(max_length=100, blank=True)
    rearmed_at = models.DateTimeField(null=True, blank=True)
    rearmed_by = models.CharField(max_length=100, blank=True)

    class Meta:
        verbose_name_plural = "kill switch"

    def __str__(self) -> str:
        return f"kill switch: tripped ({self.reason})" if self.tripped else "kill switch: armed"

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None


class Deployment(models.Model):
    """This installation's name on the venues (pk 1), generated the first time it is asked for:
    every client order id starts with it, so ids stay unique for the life of an account although
    databases are reset and other deployments trade on the same keys."""

    key = models.CharField(max_length=DEPLOYMENT_KEY_LENGTH, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"deployment {self.key}"

    @classmethod
    def current_key(cls) -> str:
        """The key, created with a fresh random value the first time (read each time: a database
        reset must never leave a process naming orders with the old deployment's key)."""
        alphabet = string.ascii_lowercase + string.digits
        fresh = "".join(secrets.choice(alphabet) for _ in range(DEPLOYMENT_KEY_LENGTH))
        return cls.objects.get_or_create(pk=1, defaults={"key": fresh})[0].key
