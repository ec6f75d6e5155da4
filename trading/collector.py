"""Collection: read one venue's books for the active strategy's symbols, number and publish them.

A venue that fails backs off for a time that doubles with each consecutive failure (kept in
Redis, so every worker sees it); after COLLECT_FAILURES_BEFORE_DOWN failures in a row it is marked
down, and its first success marks it up again. One venue's trouble never touches another's.
A book that fails validation, or whose mid is outside the price band (trading.core.band), is
counted by venue and reason and logged, never published: so a worker that re-checks against the
latest books in Redis never sees an absurd one either.

A venue whose books are streamed (Venue.feed, trading.core.streams.collection) is polled only while
its stream is not live, and its polled books are then published in the stream's place; one fed by
both is polled as a cross-check while its stream is live: each polled book is compared with the
streamed one, and a disagreement past STREAM_CROSSCHECK_BPS is counted as the stream's mismatch
(which monitoring alerts on), nothing published.

What collection needs from the database (the enabled venues, the active strategy's symbols) is
kept in Redis as last read, so collection goes on publishing while the database is away; books
queued for storage meanwhile wait in Redis, up to QUOTE_BUFFER_MAX (see pubsub.publish_quotes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import Error as DatabaseError
from django.utils import timezone

from trading import streams
from trading.clock import now_ms
from trading.core import band
from trading.core import streams as stream_rules
from trading.core.streams import Collection, StreamEvent
from trading.core.types import Quote
from trading.core.validate import QuoteRejected
from trading.core_inputs import NoActiveStrategy, active_strategy
from trading.models import Venue
from trading.observability import heartbeats, metrics
from trading.pubsub import connect, latest_book, names, publish_quotes, reserve_sequences
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


# The Venue fields a book gateway, the collector and the streamer read, kept in the plan.
PLAN_FIELDS = ("name", "kind", "ccxt_id", "api_url", "status", "feed", "stream_url", "stream_stall_ms")


@dataclass(frozen=True)
class CollectionPlan:
    """What to collect: the enabled venues (by id, with PLAN_FIELDS) and the symbols."""

    venues: dict[int, dict[str, Any]]
    symbols: list[str]

    def venue(self, venue_id: int) -> Venue | None:
        """The venue as an unsaved row built from the plan (enough for a gateway), or None."""
        fields = self.venues.get(venue_id)
        return None if fields is None else Venue(pk=venue_id, enabled=True, **fields)

    def to_json(self) -> str:
        return json.dumps({"venues": self.venues, "symbols": self.symbols})

    @classmethod
    def from_json(cls, raw: bytes | str) -> CollectionPlan:
        body: dict[str, Any] = json.loads(raw)
        return cls({int(pk): fields for pk, fields in body["venues"].items()}, list(body["symbols"]))


def read_plan() -> CollectionPlan:
    """The plan from the database. Raises Django's database errors."""
    rows = Venue.objects.filter(enabled=True).values("pk", *PLAN_FIELDS)
    venues = {row.pop("pk"): row for row in rows}
    try:
        symbols = list(active_strategy().symbols)
    except NoActiveStrategy as exc:
        log.warning("nothing to collect: %s", exc)
        symbols = []
    return CollectionPlan(venues, symbols)


def collection_plan(client: redis.Redis) -> CollectionPlan:
    """The plan from the database, kept in Redis as it was read; while the database is away, the
    plan last kept. Raises the database's error when there is none."""
    key = names().collection_plan
    try:
        plan = read_plan()
    except DatabaseError as exc:
        kept = client.get(key)
        if kept is None:
            raise
        log.warning("database unavailable (%s): collecting by the last plan read", str(exc).strip()[:200])
        return CollectionPlan.from_json(kept)
    client.set(key, plan.to_json())
    return plan


def venues_to_collect() -> list[int]:
    """Ids of the enabled venues that are not backing off, and not served by a live stream."""
    n = names()
    with connect() as client:
        venues = list(collection_plan(client).venues.items())
        if not venues:
            return []
        pipe = client.pipeline(transaction=False)
        for _, fields in venues:
            pipe.exists(n.venue_key(fields["name"], "backoff"))
        waiting = pipe.execute()
        rounds = streams.collections(client, [fields for _, fields in venues], now_ms())
    return [
        pk
        for (pk, _), backing_off, round_ in zip(venues, waiting, rounds, strict=True)
        if not backing_off and round_ is not Collection.SKIP
    ]


def collect_venue(venue_id: int) -> int:
    """Fetch, validate, band-check, number and publish the venue's books; returns how many were
    published. A venue error is recorded as a failure (back-off, maybe marked down) and publishes
    nothing. A venue whose live stream serves it is not polled; one fed by both is polled as a
    cross-check of its live stream, publishing nothing. Works from the plan last read while the
    database is away."""
    with connect() as client:
        plan = collection_plan(client)
        venue = plan.venue(venue_id)
        if venue is None:
            log.info("venue %s is gone or disabled: nothing to collect", venue_id)
            return 0
        [round_] = streams.collections(client, [plan.venues[venue_id]], now_ms())
        if not plan.symbols or round_ is Collection.SKIP:
            return 0
        try:
            books = asyncio.run(fetch_books(venue, plan.symbols))
        except VenueError as error:
            record_failure(client, venue, error)
            metrics.COLLECT_FAILURES.labels(venue=venue.name).inc()
            heartbeats.write_collector(client, venue.name, 0, f"{type(error).__name__}: {error}"[:200])
            return 0
        if round_ is Collection.CROSS_CHECK:
            cross_check(client, venue, books.quotes)
            published = 0
        else:
            published = publish_round(client, plan, venue, books)
        record_success(client, venue)
        heartbeats.write_collector(client, venue.name, published, None)
    return published


def publish_round(client: redis.Redis, plan: CollectionPlan, venue: Venue, books: Round) -> int:
    """Band-check, number and publish a round's books; count what was refused. Returns how many
    were published."""
    peers = [fields["name"] for fields in plan.venues.values()]
    quotes, off_band = within_band(client, venue, peers, books.quotes, now_ms())
    record_rejections(client, venue, [*books.rejected, *off_band])
    published = publish_quotes(client, number_quotes(client, quotes))
    metrics.QUOTES_PUBLISHED.labels(venue=venue.name).inc(published)
    return published


def cross_check(client: redis.Redis, venue: Venue, polled: Sequence[Quote]) -> list[str]:
    """Compare each polled book with the venue's streamed book kept as its latest: each that is
    further from it than STREAM_CROSSCHECK_BPS is logged and counted as a mismatch of the venue's
    stream (which monitoring alerts on). Returns the symbols whose books disagreed."""
    tolerance = Decimal(settings.STREAM_CROSSCHECK_BPS)
    disagreed = []
    for quote in polled:
        streamed = latest_book(client, quote.symbol, venue.name)
        if streamed is None or (gap := stream_rules.disagreement(quote, streamed, tolerance)) is None:
            continue
        log.warning(
            "%s: polled %s book %s/%s is %.1f bps from the streamed %s/%s",
            venue.name,
            quote.symbol,
            quote.best_bid,
            quote.best_ask,
            gap,
            streamed.best_bid,
            streamed.best_ask,
        )
        streams.record_event(client, venue.name, StreamEvent.MISMATCH, quote.received_ts)
        disagreed.append(quote.symbol)
    return disagreed


def price_band() -> band.PriceBand:
    return band.PriceBand(
        max_bps=Decimal(settings.PRICE_BAND_BPS),
        window_ms=settings.PRICE_BAND_WINDOW_MS,
        history=settings.PRICE_BAND_HISTORY,
    )


def within_band(
    client: redis.Redis, venue: Venue, venues: Sequence[str], quotes: Sequence[Quote], now: int
) -> tuple[list[Quote], list[QuoteRejected]]:
    """Split the venue's books into those inside the price band and rejections (`price_band`),
    judged by every venue's recent books of the symbol (see trading.core.band), which are kept in
    Redis, so every worker judges alike."""
    rules, n = price_band(), names()
    if rules.max_bps <= 0 or not quotes:
        return list(quotes), []
    pipe = client.pipeline(transaction=False)
    for quote in quotes:
        for name in venues:
            pipe.lrange(n.band_mids(name, quote.symbol), 0, rules.history - 1)
    answers = iter(pipe.execute())
    kept: list[Quote] = []
    refused: list[QuoteRejected] = []
    pipe = client.pipeline(transaction=False)
    for quote in quotes:
        levels = [band.level(_seen_entries(next(answers)), rules, now) for _ in venues]
        breach = band.judge(quote, band.market(levels), rules)
        if breach is None:
            kept.append(quote)
        else:
            refused.append(QuoteRejected(band.BAND_REASON, f"{quote.symbol}: {breach.describe()}"))
        key = n.band_mids(venue.name, quote.symbol)
        pipe.lpush(key, f"{quote.received_ts}:{band.mid(quote)}")
        pipe.ltrim(key, 0, max(rules.history, 1) - 1)
        pipe.expire(key, max(rules.window_ms // 1000, 1) * 10)
    pipe.execute()
    return kept, refused


def _seen_entries(raw: Sequence[bytes]) -> list[band.Seen]:
    """A venue's kept mids ("<received ms>:<mid>", newest first in Redis), oldest first."""
    entries = []
    for item in reversed(raw):
        stamp, _, value = item.decode().partition(":")
        entries.append(band.Seen(Decimal(value), int(stamp)))
    return entries


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
    """Count each rejected book by reason under the venue's `rejections` hash (which monitoring
    reads) and in `arb_books_rejected_total{venue,reason}`."""
    if not rejected:
        return
    key = names().venue_key(venue.name, "rejections")
    counts: dict[str, int] = defaultdict(int)
    for rejection in rejected:
        log.warning("%s: book rejected: %s", venue.name, rejection)
        counts[rejection.reason] += 1
    pipe = client.pipeline(transaction=False)
    for reason, count in counts.items():
        pipe.hincrby(key, reason, count)
        metrics.BOOKS_REJECTED.labels(venue=venue.name, reason=reason).inc(count)
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
    """Conditional, so that of several workers seeing the same failure one marks it, once. While
    the database is away the venue stays as it is (the back-off still holds it off)."""
    try:
        changed = Venue.objects.filter(pk=venue.pk, status=Venue.Status.UP).update(
            status=Venue.Status.DOWN, status_reason=reason[:200], status_changed_at=timezone.now()
        )
    except DatabaseError as exc:
        log.warning("%s: could not be marked down, database unavailable: %s", venue.name, exc)
        return
    if changed:
        log.error("%s marked down: %s", venue.name, reason)


def mark_up(venue: Venue) -> None:
    try:
        changed = Venue.objects.filter(pk=venue.pk, status=Venue.Status.DOWN).update(
            status=Venue.Status.UP, status_reason="", status_changed_at=timezone.now()
        )
    except DatabaseError as exc:
        log.warning("%s: could not be marked up, database unavailable: %s", venue.name, exc)
        return
    if changed:
        log.info("%s marked up: answering again", venue.name)
