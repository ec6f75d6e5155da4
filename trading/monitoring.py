"""Monitoring: checks that name what is wrong now.

A check looks at Redis or the database and returns the conditions it finds, each with a stable key
("venue_stale:binance"); `run_once` runs them all and hands their conditions to trading.alerts,
which opens, keeps and resolves the alerts. A check that fails says so as its own condition, and
its alerts are neither bumped nor resolved while their state is unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import redis
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from trading import alerts, risk_controls, streams
from trading.alerts import CRITICAL, WARNING, Condition, Transitions
from trading.clock import now_ms
from trading.core import risk as core_risk
from trading.core import streams as stream_rules
from trading.core.freshness import alive, stale_symbols
from trading.core.streams import StreamEvent
from trading.core_inputs import NoActiveStrategy, active_strategy
from trading.models import KillSwitch, RiskLimits, Venue
from trading.observability import heartbeats
from trading.pubsub import connect, latest_books, names

log = logging.getLogger(__name__)

# A heartbeat older than this counts as missing even before its key expires.
HEARTBEAT_MAX_AGE_MS = 15_000
# Only one monitoring run at a time: two would race to open the same alert.
RUN_LOCK_SECONDS = 30


@dataclass(frozen=True)
class Freshness:
    """How old each symbol's latest book of one venue is (None: never seen)."""

    venue: Venue
    ages_ms: dict[str, int | None]

    @property
    def stale(self) -> list[str]:
        return stale_symbols(self.ages_ms, self.venue.max_quote_age_ms)


def venue_freshness(client: redis.Redis, now: int) -> list[Freshness]:
    """Every enabled venue's book ages for the active strategy's symbols (no symbols when no
    strategy is active)."""
    try:
        symbols = list(active_strategy().symbols)
    except NoActiveStrategy:
        symbols = []
    books = {symbol: latest_books(client, symbol) for symbol in symbols}
    return [
        Freshness(
            venue,
            {s: now - books[s][venue.name].received_ts if venue.name in books[s] else None for s in symbols},
        )
        for venue in Venue.objects.filter(enabled=True)
    ]


def check_venue_stale(client: redis.Redis, now: int) -> list[Condition]:
    return [
        Condition(
            f"venue_stale:{fresh.venue.name}",
            CRITICAL,
            f"Venue {fresh.venue.name} stale: no {', '.join(fresh.stale)} book within "
            f"{fresh.venue.max_quote_age_ms} ms",
        )
        for fresh in venue_freshness(client, now)
        if fresh.stale
    ]


def check_venue_errors(client: redis.Redis, now: int) -> list[Condition]:
    """Venues failing VENUE_ERROR_RATE_LIMIT times in a row, or rejecting that many books since the
    previous run (the collector keeps the streak and cumulative rejection counts)."""
    n, limit = names(), settings.VENUE_ERROR_RATE_LIMIT
    found = []
    for venue in Venue.objects.filter(enabled=True).values_list("name", flat=True):
        failures = int(client.get(n.venue_key(venue, "failures")) or 0)
        rejections = new_rejections(client, venue)
        if failures >= limit or rejections >= limit:
            subject = f"Venue {venue} erring: {failures} failures in a row, {rejections} books rejected"
            found.append(Condition(f"venue_errors:{venue}", WARNING, subject))
    return found


def new_rejections(client: redis.Redis, venue: str) -> int:
    """Books the venue had rejected since the previous call (the first call counts them all)."""
    n = names()
    total = sum(int(count) for count in client.hvals(n.venue_key(venue, "rejections")))
    previous = client.set(n.venue_key(venue, "rejections_seen"), total, get=True)
    return max(total - int(previous or 0), 0)


def check_price_band(client: redis.Redis, now: int) -> list[Condition]:
    """Venues whose books the collectors refused for straying off the price band since the
    previous run: the venue is flagged until its books come back into the band."""
    n = names()
    found = []
    for venue in Venue.objects.filter(enabled=True).values_list("name", flat=True):
        total = int(client.hget(n.venue_key(venue, "rejections"), "price_band") or 0)
        previous = int(client.set(n.venue_key(venue, "price_band_seen"), total, get=True) or 0)
        if total > previous:
            subject = (
                f"Venue {venue} off the price band: {total - previous} book(s) refused, more than "
                f"{settings.PRICE_BAND_BPS} bps from the market"
            )
            found.append(Condition(f"price_band:{venue}", WARNING, subject))
    return found


def streamed_venues() -> list[str]:
    """The enabled venues whose books are streamed (fed by stream or both)."""
    rows = Venue.objects.filter(enabled=True).exclude(feed=Venue.Feed.POLL)
    return list(rows.values_list("name", flat=True))


def stream_down(beat: Mapping[str, object] | None, now: int) -> str | None:
    """Why a venue's stream counts as down, or None: live, or out of it (resyncing) for no longer
    than STREAM_HEARTBEAT_MAX_AGE_MS; a fault of its own is counted, and alerted when it repeats."""
    if beat is None:
        return "no streamer serves it"
    if streams.live(beat, now):
        return None
    down_ms = now - int(str(beat.get("since_ms") or 0))
    if down_ms <= settings.STREAM_HEARTBEAT_MAX_AGE_MS:
        return None
    return f"{beat.get('state')} for {down_ms // 1000}s: {beat.get('reason') or 'heartbeat late'}"


def check_streams_down(client: redis.Redis, now: int) -> list[Condition]:
    """Streamed venues whose stream is down: they are polled meanwhile, less promptly."""
    found = []
    for venue, beat in streams.beats(client, streamed_venues()).items():
        why = stream_down(beat, now)
        if why is not None:
            subject = f"Venue {venue} stream down ({why}); polled meanwhile"
            found.append(Condition(f"stream_down:{venue}", WARNING, subject))
    return found


def check_stream_faults(client: redis.Redis, now: int) -> list[Condition]:
    """Venues whose stream faulted STREAM_FAULT_LIMIT times within STREAM_FAULT_WINDOW_SECONDS."""
    found = []
    window = settings.STREAM_FAULT_WINDOW_SECONDS
    for venue in streamed_venues():
        kinds = [kind for kind in streams.recent_events(client, venue, now) if kind in stream_rules.FAULTS]
        faults = stream_rules.repeated_faults(kinds, settings.STREAM_FAULT_LIMIT)
        if faults is not None:
            counts = ", ".join(f"{kind} {kinds.count(kind)}" for kind in sorted(set(kinds)))
            subject = f"Venue {venue} stream faulted {faults} times in {window}s ({counts}), resynced"
            found.append(Condition(f"stream_faults:{venue}", WARNING, subject))
    return found


def check_stream_mismatch(client: redis.Redis, now: int) -> list[Condition]:
    """Venues fed by both whose polled books disagreed with their streamed ones (past
    STREAM_CROSSCHECK_BPS) within STREAM_FAULT_WINDOW_SECONDS."""
    found = []
    for venue in streamed_venues():
        mismatches = streams.recent_events(client, venue, now).count(StreamEvent.MISMATCH)
        if mismatches:
            subject = (
                f"Venue {venue}: polled book {mismatches} time(s) more than {settings.STREAM_CROSSCHECK_BPS} "
                f"bps from the streamed one in {settings.STREAM_FAULT_WINDOW_SECONDS}s"
            )
            found.append(Condition(f"stream_mismatch:{venue}", WARNING, subject))
    return found


def check_listener(client: redis.Redis, now: int) -> list[Condition]:
    if alive(heartbeats.read_all(client, "listener"), now, HEARTBEAT_MAX_AGE_MS):
        return []
    return [Condition("listener_missing", CRITICAL, "No listener heartbeat: prices are not being decided")]


def check_workers(client: redis.Redis, now: int) -> list[Condition]:
    if alive(heartbeats.read_all(client, "worker"), now, HEARTBEAT_MAX_AGE_MS):
        return []
    return [Condition("workers_missing", CRITICAL, "No Celery worker heartbeat: nothing collects or trades")]


def broker_queues() -> list[str]:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    return sorted(routed | {settings.CELERY_TASK_DEFAULT_QUEUE})


def check_queue_backlog(client: redis.Redis, now: int) -> list[Condition]:
    """Queues holding more than QUEUE_BACKLOG_LIMIT waiting tasks. The broker prefixes its keys
    with ARB_PREFIX (global_keyprefix), so a queue is the list `<prefix><queue>`."""
    found = []
    for queue in broker_queues():
        waiting = int(client.llen(f"{settings.ARB_PREFIX}{queue}"))
        if waiting > settings.QUEUE_BACKLOG_LIMIT:
            subject = f"Queue {queue} backlog: {waiting} tasks waiting (limit {settings.QUEUE_BACKLOG_LIMIT})"
            found.append(Condition(f"queue_backlog:{queue}", WARNING, subject))
    return found


def check_daily_loss(client: redis.Redis, now: int) -> list[Condition]:
    realized, limit = sum(risk_controls.todays_pnls(), Decimal(0)), RiskLimits.current().daily_loss_limit
    if realized >= -limit:
        return []
    return [Condition("daily_loss", CRITICAL, f"Daily loss {-realized:,.2f} past the limit of {limit:,.2f}")]


def check_drawdown(client: redis.Redis, now: int) -> list[Condition]:
    drawdown, limit = core_risk.max_drawdown(risk_controls.todays_pnls()), Decimal(settings.MAX_DRAWDOWN)
    if drawdown <= limit:
        return []
    return [Condition("drawdown", CRITICAL, f"Drawdown {drawdown:,.2f} today past the limit of {limit:,.2f}")]


def check_kill_switch(client: redis.Redis, now: int) -> list[Condition]:
    """Keeps the kill switch's alert open while it stays tripped (tripping opens it at once)."""
    switch = KillSwitch.objects.filter(tripped_at__isnull=False).first()
    return [] if switch is None else [risk_controls.kill_switch_condition(switch)]


Check = Callable[[redis.Redis, int], list[Condition]]
CHECKS: dict[str, Check] = {
    "venue_stale": check_venue_stale,
    "venue_errors": check_venue_errors,
    "price_band": check_price_band,
    "stream_down": check_streams_down,
    "stream_faults": check_stream_faults,
    "stream_mismatch": check_stream_mismatch,
    "listener_missing": check_listener,
    "workers_missing": check_workers,
    "queue_backlog": check_queue_backlog,
    "daily_loss": check_daily_loss,
    "drawdown": check_drawdown,
    "kill_switch": check_kill_switch,
}
# Alerts of these resolve by themselves once their condition clears; every other alert is an
# incident, which a person resolves.
SELF_RESOLVING = frozenset({*CHECKS, "check_failed"})


def run_checks(client: redis.Redis, now: int) -> tuple[list[Condition], set[str]]:
    """Every check's conditions, and the names of the checks that could not run (each of which
    is also reported as a `check_failed:<name>` condition)."""
    conditions: list[Condition] = []
    failed: set[str] = set()
    for name, check in CHECKS.items():
        try:
            conditions.extend(check(client, now))
        except (redis.RedisError, DatabaseError) as exc:
            log.exception("monitoring check %s failed", name)
            failed.add(name)
            conditions.append(
                Condition(f"check_failed:{name}", WARNING, f"Monitoring check {name} failing: {exc}")
            )
    return conditions, failed


def run_once() -> Transitions | None:
    """One monitoring run: all checks, then the alerts. None when another run holds the lock."""
    with connect() as client:
        lock = client.lock(f"{names().prefix}monitor:lock", timeout=RUN_LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            log.info("monitoring run skipped: the previous one is still running")
            return None
        try:
            conditions, failed = run_checks(client, now_ms())
            return alerts.sync(conditions, timezone.now(), SELF_RESOLVING, failed)
        finally:
            lock.release()
