"""Collection: read one venue's books for the active strategy's symbols, number and publish them.

A venue that fails backs off for a time that doubles with each consecutive failure (kept in
Redis, so every worker sees it); after COLLECT_FAILURES_BEFORE_DOWN failures in a row it is marked
down, and its first success marks it up again. One venue's trouble never touches another's.
A book that fails validation is counted and logged, never published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis
from django.conf import settings
from django.utils import timezone

from trading.config import NoActiveStrategy, active_strategy
from trading.core.types import Quote
from trading.core.validate import QuoteRejected
from trading.models import Venue
from trading.observability import heartbeats, metrics
from trading.pubsub import connect, names, publish_quotes, reserve_sequences
from trading.venues.base import TemporaryVenueError, VenueError
from trading.venues.registry import book_gateway

log = logging.getLogger(__name__)

BOOK_DEPTH = 10
# A failure streak older than this many maximum back-offs is forgotten (a venue disabled mid-streak
# starts afresh when it comes back).
STREAK_MEMORY_BACKOFFS = 10


@dataclass(frozen=True)
class Round:
    """What one collection round got from a venue: valid books and rejected ones."""

    quotes: list[Quote]
    rejected: list[QuoteRejected]


def venues_to_collect() -> list[int]:
    """Ids of the enabled venues that are not backing off."""
    venues = list(Venue.objects.filter(enabled=True).values_list("pk", "name"))
    if not venues:
        return []
    n = names()
    with connect() as client:
        pipe = client.pipeline(transaction=False)
        for _, name in venues:
            pipe.exists(n.venue_key(name, "backoff"))
        waiting = pipe.execute()
    return [pk for (pk, _), backing_off in zip(venues, waiting, strict=True) if not backing_off]


def collect_venue(venue_id: int) -> int:
    """Fetch, validate, number and publish the venue's books; returns how many were published.

    A venue error is recorded as a failure (back-off, maybe marked down) and publishes nothing.
    """
    venue = Venue.objects.filter(pk=venue_id, enabled=True).first()
    if venue is None:
        log.info("venue %s is gone or disabled: nothing to collect", venue_id)
        return 0
    symbols = configured_symbols()
    if not symbols:
        return 0
    with connect() as client:
        try:
            books = asyncio.run(fetch_books(venue, symbols))
        except VenueError as error:
            record_failure(client, venue, error)
            metrics.COLLECT_FAILURES.labels(venue=venue.name).inc()
            heartbeats.write_collector(client, venue.name, 0, f"{type(error).__name__}: {error}"[:200])
            return 0
        record_rejections(client, venue, books.rejected)
        published = publish_quotes(client, number_quotes(client, books.quotes))
        record_success(client, venue)
        metrics.QUOTES_PUBLISHED.labels(venue=venue.name).inc(published)
        heartbeats.write_collector(client, venue.name, published, None)
    return published


def configured_symbols() -> list[str]:
    try:
        return list(active_strategy().symbols)
    except NoActiveStrategy as exc:
        log.warning("nothing to collect: %s", exc)
        return []


async def fetch_books(venue: Venue, symbols: Sequence[str]) -> Round:
    """Every symbol's book at once through the venue's gateway. Raises the first VenueError."""
    gateway = book_gateway(venue)
    try:
        results = await asyncio.gather(
            *(gateway.fetch_order_book(symbol, BOOK_DEPTH) for symbol in symbols), return_exceptions=True
        )
    finally:
        await gateway.close()
    return sort_results(results)


def sort_results(results: Sequence[Quote | BaseException]) -> Round:
    """Split gathered results into books and rejections; re-raise a venue error or anything else."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, QuoteRejected):
            raise result
    return Round(
        quotes=[result for result in results if isinstance(result, Quote)],
        rejected=[result for result in results if isinstance(result, QuoteRejected)],
    )


def number_quotes(client: redis.Redis, quotes: Sequence[Quote]) -> list[Quote]:
    """Each quote with the next sequence number of its (venue, symbol) stream."""
    sequences = reserve_sequences(client, [(quote.venue, quote.symbol) for quote in quotes])
    return [replace(quote, seq=seq) for quote, seq in zip(quotes, sequences, strict=True)]


def record_rejections(client: redis.Redis, venue: Venue, rejected: Sequence[QuoteRejected]) -> None:
    """Count each rejected book by reason under the venue's `rejections` hash."""
    if not rejected:
        return
    key = names().venue_key(venue.name, "rejections")
    pipe = client.pipeline(transaction=False)
    for rejection in rejected:
        log.warning("%s: book rejected: %s", venue.name, rejection)
        pipe.hincrby(key, rejection.reason, 1)
    pipe.execute()


def backoff_seconds(failures: int) -> int:
    """1, 2, 4, ... seconds for the 1st, 2nd, 3rd failure in a row, up to the configured maximum."""
    doubled: int = 2 ** min(failures - 1, 30)
    ceiling: int = settings.COLLECT_MAX_BACKOFF_SECONDS
    return min(doubled, ceiling)


def record_failure(client: redis.Redis, venue: Venue, error: VenueError) -> None:
    """Back the venue off, and mark it down once it has failed often enough in a row."""
    n = names()
    streak_key = n.venue_key(venue.name, "failures")
    pipe = client.pipeline(transaction=False)
    pipe.incr(streak_key)
    pipe.expire(streak_key, settings.COLLECT_MAX_BACKOFF_SECONDS * STREAK_MEMORY_BACKOFFS)
    failures = int(pipe.execute()[0])
    delay = backoff_seconds(failures)
    client.set(n.venue_key(venue.name, "backoff"), str(error)[:200], ex=delay)
    level = logging.WARNING if isinstance(error, TemporaryVenueError) else logging.ERROR
    log.log(
        level, "%s: collection failed (%d in a row), backing off %ds: %s", venue.name, failures, delay, error
    )
    if failures >= settings.COLLECT_FAILURES_BEFORE_DOWN:
        mark_down(venue, f"{failures} failures in a row; last: {error}")


def record_success(client: redis.Redis, venue: Venue) -> None:
    """End the venue's failure streak and back-off; mark it up if it was down."""
    n = names()
    client.delete(n.venue_key(venue.name, "failures"), n.venue_key(venue.name, "backoff"))
    if venue.status == Venue.Status.DOWN:
        mark_up(venue)


def mark_down(venue: Venue, reason: str) -> None:
    """Conditional, so that of several workers seeing the same failure one marks it, once."""
    changed = Venue.objects.filter(pk=venue.pk, status=Venue.Status.UP).update(
        status=Venue.Status.DOWN, status_reason=reason[:200], status_changed_at=timezone.now()
    )
    if changed:
        log.error("%s marked down: %s", venue.name, reason)


def mark_up(venue: Venue) -> None:
    changed = Venue.objects.filter(pk=venue.pk, status=Venue.Status.DOWN).update(
        status=Venue.Status.UP, status_reason="", status_changed_at=timezone.now()
    )
    if changed:
        log.info("%s marked up: answering again", venue.name)
