"""Celery tasks: thin interfaces over service functions. Names are stable; routes go by prefix."""

from __future__ import annotations

from celery import shared_task

from trading import collector, execution, storage


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
    time_limit=60,
    soft_time_limit=50,
)
def execute_opportunity(opportunity_id: int) -> None:
    """Idempotent: the opportunity is claimed with a conditional update, so a redelivery is a no-op."""
    execution.execute_opportunity(opportunity_id)
