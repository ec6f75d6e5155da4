"""Celery tasks: thin interfaces over service functions. Names are stable; routes go by prefix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.utils import timezone

from trading import accounts, collector, execution, lifecycle, monitoring, reconcile, risk_controls, storage
from trading.clock import now_ms
from trading.mode import announce_trading_mode
from trading.notify import Message, TemporaryNotifyError, announce_channels, deliver, rules


@shared_task(name="collect.all_venues", ignore_result=True, time_limit=10, soft_time_limit=8)
def collect_all_venues() -> None:
    """Fan out one collection task per enabled venue, so a slow venue never delays the others."""
    for venue_id in collector.venues_to_collect():
        collect_venue.apply_async((venue_id,), expires=5)


@shared_task(name="collect.venue", ignore_result=True, time_limit=15, soft_time_limit=12)
def collect_venue(venue_id: int) -> None:
    collector.collect_venue(venue_id)


@shared_task(name="collect.store_quotes", ignore_result=True, time_limit=60)
def store_quotes() -> None:
    storage.store_pending()


@shared_task(
    name="trade.execute_opportunity",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=settings.TRADE_TIME_LIMIT_S,
    soft_time_limit=settings.TRADE_SOFT_TIME_LIMIT_S,
)
def execute_opportunity(opportunity_id: int) -> None:
    """Idempotent: the opportunity is claimed with a conditional update, so a redelivery trades
    nothing twice; one left in flight by a worker that died is taken over and resumed."""
    execution.execute_opportunity(opportunity_id)


@shared_task(name="trade.resume", ignore_result=True, time_limit=30, soft_time_limit=25)
def resume_abandoned() -> None:
    """Hand every trade left in flight by a worker that died to a trade task, and expire the
    dispatched opportunities whose task was lost."""
    for opportunity_id in lifecycle.abandoned():
        execute_opportunity.apply_async((opportunity_id,))
    lifecycle.expire_lost(now_ms())


@shared_task(name="trade.refresh_accounts", ignore_result=True, time_limit=60, soft_time_limit=50)
def refresh_accounts() -> None:
    """Each live venue's fee tier, market rules and (while quiet) balances into the record."""
    accounts.refresh_all()


@shared_task(name="monitor.check", ignore_result=True, time_limit=30, soft_time_limit=25)
def monitor_check() -> None:
    risk_controls.enforce_daily_loss()  # first, so this run's checks already see a switch it trips
    monitoring.run_once()


@shared_task(name="trade.reconcile", ignore_result=True, time_limit=120, soft_time_limit=110)
def reconcile_venues() -> None:
    """Compare recorded orders and balances with what each live venue reports; alert on differences."""
    reconcile.reconcile_all()


@shared_task(
    name="notify.send",
    ignore_result=True,
    autoretry_for=(TemporaryNotifyError,),
    max_retries=settings.NOTIFY_MAX_RETRIES,
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=False,
    time_limit=30,
    soft_time_limit=25,
)
def send_notification(channel: str, message: dict[str, Any]) -> None:
    """One message on one channel, so a failing channel delays no other. Temporary errors are
    retried with back-off up to NOTIFY_MAX_RETRIES times, then the task fails (logged)."""
    deliver(channel, Message.from_json(message))


@shared_task(name="notify.daily_summary", ignore_result=True, time_limit=60)
def send_daily_summary() -> None:
    """Yesterday's summary (the schedule runs just after midnight UTC)."""
    rules.daily_summary(timezone.now().date() - timedelta(days=1))


@worker_ready.connect
def announce_notification_channels(**_: object) -> None:
    announce_channels()


@worker_ready.connect
def announce_mode(**_: object) -> None:
    announce_trading_mode()


@worker_ready.connect
@worker_process_init.connect
def warm_up(**_: object) -> None:
    """Open the venues' order gateways before the first opportunity arrives (each prefork child
    has its own; a solo worker trades in its main process)."""
    accounts.warm_up()
