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

from trading import pubsub
from trading.clock import now_ms
from trading.core.types import Quote
from trading.models import StrategyConfig, Venue
from trading.observability import heartbeats

Check = dict[str, Any]


@dataclass(frozen=True)
class VenueLimit:
    name: str
    status: str
    max_age_ms: int


def health_report() -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Healthy means: the database and Redis answer, at least one listener and
    one worker have a live heartbeat, and every enabled venue has a book younger than its
    `max_quote_age_ms` for every symbol of the active strategy. The report has one entry per
    check, each with "ok" and what it was decided from."""
    database, venues, symbols = _database()
    checks: dict[str, Check] = {"database": database}
    checks.update(_redis_checks(venues, symbols, now_ms()))
    healthy = all(check["ok"] for check in checks.values())
    return healthy, {"healthy": healthy, "checks": checks}


def _database() -> tuple[Check, list[VenueLimit], list[str]]:
    """The database check, with what the venue check needs from it: enabled venues and symbols."""
    try:
        rows = Venue.objects.filter(enabled=True).values_list("name", "status", "max_quote_age_ms")
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
            }
    except redis.RedisError as exc:
        failed = {"ok": False, "error": f"redis: {exc}"[:200]}
        return dict.fromkeys(("redis", "listeners", "workers", "venues"), failed)


def _processes(beats: dict[str, dict[str, Any]], now: int) -> Check:
    """OK when at least one process of the kind has a live heartbeat."""
    seen = {name: {**beat, "age_ms": _age(beat.get("at_ms"), now)} for name, beat in beats.items()}
    return {"ok": bool(seen), "processes": seen}


def _venues(client: redis.Redis, venues: list[VenueLimit], symbols: list[str], now: int) -> Check:
    books = {symbol: pubsub.latest_books(client, symbol) for symbol in symbols}
    collectors = heartbeats.read_all(client, "collector")
    report = {venue.name: _venue(venue, books, collectors.get(venue.name), now) for venue in venues}
    return {"ok": all(entry["ok"] for entry in report.values()), "symbols": symbols, "venues": report}


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
