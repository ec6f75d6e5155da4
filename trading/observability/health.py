"""The health report behind `/healthz`, also read by the monitoring checks and the dashboard.

Cheap enough to poll every second: two small queries (enabled venues, the active strategy's
symbols) and a handful of Redis reads (a ping, the heartbeat indexes, one latest-books hash per
symbol). No table is scanned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError

from trading import pubsub, streams
from trading.clock import now_ms
from trading.core.streams import Feed
from trading.core.types import Quote
from trading.models import StrategyConfig, Venue
from trading.observability import heartbeats

Check = dict[str, Any]


@dataclass(frozen=True)
class VenueLimit:
    name: str
    status: str
    max_age_ms: int
    feed: str = Feed.POLL


def health_report() -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Healthy means: the database and Redis answer, at least one listener and
    one worker have a live heartbeat, every enabled venue has a book younger than its
    `max_quote_age_ms` for every symbol of the active strategy, and every streamed venue's
    stream is live (a venue whose stream is down is polled meanwhile: degraded, not blind). The
    report has one entry per check, each with "ok" and what it was decided from."""
    database, venues, symbols = _database()
    checks: dict[str, Check] = {"database": database}
    checks.update(_redis_checks(venues, symbols, now_ms()))
    healthy = all(check["ok"] for check in checks.values())
    return healthy, {"healthy": healthy, "checks": checks}


def _database() -> tuple[Check, list[VenueLimit], list[str]]:
    """The database check, with what the venue check needs from it: enabled venues and symbols."""
    try:
        rows = Venue.objects.filter(enabled=True).values_list("name", "status", "max_quote_age_ms", "feed")
        venues = [VenueLimit(*row) for row in rows]
        symbols = StrategyConfig.objects.filter(active=True).values_list("symbols", flat=True).first()
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc)[:200]}, [], []
    return {"ok": True}, venues, list(symbols or [])


def _redis_checks(venues: list[VenueLimit], symbols: list[str], now: int) -> dict[str, Check]:
    try:
        # A short timeout: a hung Redis must make the health check fail, not hang it.
        with redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1) as client:
            client.ping()
            return {
                "redis": {"ok": True},
                "listeners": _processes(heartbeats.read_all(client, "listener"), now),
                "workers": _processes(heartbeats.read_all(client, "worker"), now),
                "venues": _venues(client, venues, symbols, now),
                "streams": _streams(client, [venue.name for venue in venues if venue.feed != Feed.POLL], now),
            }
    except redis.RedisError as exc:
        failed = {"ok": False, "error": f"redis: {exc}"[:200]}
        return dict.fromkeys(("redis", "listeners", "workers", "venues", "streams"), failed)


def _processes(beats: dict[str, dict[str, Any]], now: int) -> Check:
    """OK when at least one process of the kind has a live heartbeat."""
    seen = {name: {**beat, "age_ms": _age(beat.get("at_ms"), now)} for name, beat in beats.items()}
    return {"ok": bool(seen), "processes": seen}


def _venues(client: redis.Redis, venues: list[VenueLimit], symbols: list[str], now: int) -> Check:
    books = {symbol: pubsub.latest_books(client, symbol) for symbol in symbols}
    collectors = heartbeats.read_all(client, "collector")
    report = {venue.name: _venue(venue, books, collectors.get(venue.name), now) for venue in venues}
    return {"ok": all(entry["ok"] for entry in report.values()), "symbols": symbols, "venues": report}


def _streams(client: redis.Redis, venues: list[str], now: int) -> Check:
    """OK when every streamed venue's stream is live."""
    beats = streams.beats(client, venues)
    events = streams.event_counts(client, venues)
    report = {venue: _stream(beat, events[venue], now) for venue, beat in beats.items()}
    return {
        "ok": all(entry["ok"] for entry in report.values()),
        "processes": _processes(heartbeats.read_all(client, "streamer"), now)["processes"],
        "venues": report,
    }


def _stream(beat: dict[str, Any] | None, events: dict[str, int], now: int) -> Check:
    """A venue's stream: its state and since when, the streamer serving it, the books it published
    and its events by kind (faults and cross-check mismatches, ever)."""
    body = beat or {}
    return {
        "ok": streams.live(beat, now),
        "state": body.get("state"),
        "age_ms": _age(body.get("at_ms"), now),
        "since_ms": body.get("since_ms"),
        "reason": body.get("reason"),
        "streamer": body.get("streamer"),
        "published": body.get("published", 0),
        "events": events,
    }


def _venue(
    venue: VenueLimit, books: dict[str, dict[str, Quote]], collector: dict[str, Any] | None, now: int
) -> Check:
    """Fresh when the venue's latest book of every symbol is within its age limit."""
    ages = {symbol: _book_age(by_venue.get(venue.name), now) for symbol, by_venue in books.items()}
    fresh = all(age is not None and age <= venue.max_age_ms for age in ages.values())
    return {
        "ok": fresh,
        "status": venue.status,
        "max_age_ms": venue.max_age_ms,
        "book_age_ms": ages,
        "collector": collector,
    }


def _book_age(quote: Quote | None, now: int) -> int | None:
    return None if quote is None else now - quote.received_ts


def _age(at_ms: object, now: int) -> int | None:
    return now - at_ms if isinstance(at_ms, int) else None
