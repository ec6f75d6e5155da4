"""What is sent, and when: trades, leg failures, alerts opening and resolving, the daily summary.

Every event has a dedup key: the same key is sent once per NOTIFY_DEDUP_SECONDS, whoever asks
(a redelivered task, a second monitoring run). Past NOTIFY_MAX_PER_MINUTE messages a minute, the
rest are dropped with a log line, so one incident cannot page anyone forty times. Each enabled
channel gets its own `notify.send` task: a slow or failing channel delays no other, and nothing
here raises into the trading path when Redis or the broker is unavailable.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta
from decimal import Decimal

import redis
from django.conf import settings
from django.db.models import Count, Sum
from kombu.exceptions import OperationalError

from arbsite.celery import app
from trading.core.numbers import plain
from trading.models import Alert, Opportunity, Order, Trade
from trading.notify.base import Message, enabled_channels
from trading.pubsub import connect, names

log = logging.getLogger(__name__)


def publish(message: Message, dedup_key: str) -> list[str]:
    """Enqueue `message` on every enabled channel unless it is a duplicate or over the rate
    limit. Returns the channels it was enqueued for (empty when dropped; the reason is logged)."""
    channels = enabled_channels()
    if not channels:
        return []
    try:
        with connect() as client:
            if not first_in_window(client, dedup_key) or over_rate_limit(client):
                return []
        return [enqueue(name, message) for name in channels]
    except (redis.RedisError, OperationalError) as exc:
        log.error("notification %r dropped: %s", message.title, exc)
        return []


def first_in_window(client: redis.Redis, dedup_key: str) -> bool:
    """Claim `dedup_key` for the dedup window; False (logged) when it was already claimed."""
    claimed = client.set(
        f"{names().prefix}notify:sent:{dedup_key}", 1, nx=True, ex=settings.NOTIFY_DEDUP_SECONDS
    )
    if not claimed:
        log.info(
            "notification %s already sent within %ds: not repeated", dedup_key, settings.NOTIFY_DEDUP_SECONDS
        )
    return bool(claimed)


def over_rate_limit(client: redis.Redis) -> bool:
    """Count this message against the current minute; True (logged) once past the limit."""
    key = f"{names().prefix}notify:minute:{int(time.time() // 60)}"
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    sent = int(pipe.execute()[0])
    if sent > settings.NOTIFY_MAX_PER_MINUTE:
        log.warning(
            "notification rate limit of %d a minute reached: message dropped", settings.NOTIFY_MAX_PER_MINUTE
        )
        return True
    return False


def enqueue(channel: str, message: Message) -> str:
    """Queue the `notify.send` task for `channel` by its name: the app's registry finds the task
    (this module never imports the task module)."""
    app.signature("notify.send", args=(channel, message.to_json())).apply_async()
    return channel


# --- the events -----------------------------------------------------------------------------------


def money(value: Decimal | None) -> str:
    return plain(value, 2, grouped=True, signed=True, missing="n/a")


def amount(value: Decimal | None) -> str:
    return plain(value, missing="n/a")


def leg_line(order: Order) -> str:
    """One leg as a trader reads it: venue, side, filled of asked, price, fee, status."""
    price = amount(order.average_price) if order.average_price is not None else f"limit {amount(order.price)}"
    return (
        f"{order.side} {amount(order.filled)}/{amount(order.amount)} on {order.venue.name} "
        f"@ {price}, fee {amount(order.fee)} ({order.status})"
    )


def legs(opportunity: Opportunity) -> tuple[tuple[str, str], ...]:
    orders = opportunity.orders.select_related("venue").order_by("side")
    return tuple((f"{order.side.capitalize()} leg", leg_line(order)) for order in orders)


def trade_message(trade: Trade) -> Message:
    """Trade executed: both legs, expected against realized PnL, fees and mode."""
    return Message(
        title=f"Trade #{trade.pk} {trade.symbol}: {money(trade.realized_pnl)} realized",
        facts=(
            *legs(trade.opportunity),
            ("Expected PnL", money(trade.expected_pnl)),
            ("Realized PnL", money(trade.realized_pnl)),
            ("Slippage vs expected", money(trade.realized_pnl - trade.expected_pnl)),
            ("Fees", amount(trade.fees)),
            ("Mode", trade.mode),
        ),
    )


def trade_executed(trade: Trade) -> list[str]:
    return publish(trade_message(trade), f"trade:{trade.pk}")


def leg_failure_message(opportunity: Opportunity) -> Message:
    return Message(
        title=f"Leg failure on opportunity #{opportunity.pk} {opportunity.symbol}",
        facts=(*legs(opportunity), ("Reason", opportunity.reason or "unknown")),
        severity="critical",
    )


def leg_failed(opportunity_id: int) -> list[str]:
    opportunity = Opportunity.objects.get(pk=opportunity_id)
    return publish(leg_failure_message(opportunity), f"leg_failure:{opportunity_id}")


def alert_opened(alert: Alert) -> list[str]:
    message = Message(
        title=f"{alert.severity.upper()}: {alert.subject}",
        facts=(("Condition", alert.key), ("Since", stamp(alert.first_seen))),
        severity=alert.severity,
    )
    return publish(message, f"alert:{alert.pk}:opened")


def alert_resolved(alert: Alert) -> list[str]:
    lasted = (alert.resolved_at or alert.last_seen) - alert.first_seen
    message = Message(
        title=f"Resolved: {alert.subject}",
        facts=(
            ("Condition", alert.key),
            ("Lasted", str(timedelta(seconds=round(lasted.total_seconds())))),
            ("Seen by checks", str(alert.count)),
        ),
        severity="resolved",
    )
    return publish(message, f"alert:{alert.pk}:resolved")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def summary_message(day: date) -> Message:
    """The day's trades, PnL, failures and alerts."""
    trades = Trade.objects.filter(created_at__date=day).aggregate(
        count=Count("pk"), realized=Sum("realized_pnl"), expected=Sum("expected_pnl"), fees=Sum("fees")
    )
    failed = Opportunity.objects.filter(detected_at__date=day, status=Opportunity.Status.FAILED).count()
    return Message(
        title=f"Daily summary for {day.isoformat()}",
        facts=(
            ("Trades", str(trades["count"])),
            ("Realized PnL", money(trades["realized"] or Decimal(0))),
            ("Expected PnL", money(trades["expected"] or Decimal(0))),
            ("Fees", amount(trades["fees"] or Decimal(0))),
            ("Failed opportunities", str(failed)),
            ("Alerts opened", str(Alert.objects.filter(first_seen__date=day).count())),
            ("Alerts still open", str(Alert.objects.filter(resolved_at__isnull=True).count())),
        ),
    )


def daily_summary(day: date) -> list[str]:
    return publish(summary_message(day), f"summary:{day.isoformat()}")
