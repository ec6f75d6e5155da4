"""Freshness: which symbols' latest books are too old, and which processes' heartbeats are recent
enough to count them alive. Ages and times are epoch milliseconds, passed in."""

from __future__ import annotations

from collections.abc import Mapping


def stale_symbols(ages_ms: Mapping[str, int | None], limit_ms: int) -> list[str]:
    """Symbols with no book (age None) or a book older than `limit_ms`, sorted."""
    return sorted(symbol for symbol, age in ages_ms.items() if age is None or age > limit_ms)


def alive(bodies: Mapping[str, Mapping[str, object]], now: int, max_age_ms: int) -> list[str]:
    """Names whose heartbeat is no older than `max_age_ms`."""
    return sorted(name for name, body in bodies.items() if now - int(str(body.get("at_ms", 0))) <= max_age_ms)
