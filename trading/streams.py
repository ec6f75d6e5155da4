"""Venues' streams as Redis holds them: written by the streamer (and the collector's cross-check),
read by the collector, monitoring, `/healthz` and `/metrics`.

- Each streamed venue has a heartbeat, `<prefix>heartbeat:stream:<venue>`: its state
  (trading.core.streams.StreamState) and since when, the streamer process serving it, the books
  it published and the time of the last one. A venue's stream is live while that heartbeat is no
  older than STREAM_HEARTBEAT_MAX_AGE_MS and says live; a venue set to stream is polled otherwise.
- Each event of a venue's stream (a fault, or a cross-check that found the polled book apart from
  the streamed one) is counted by kind for good (`<prefix>venue:<venue>:stream:events`, a hash)
  and kept with its time for STREAM_FAULT_WINDOW_SECONDS (`<prefix>venue:<venue>:stream:recent`,
  a sorted set), from which monitoring tells a repeating fault from a passing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from django.conf import settings

from trading.core import streams as rules
from trading.core.streams import Collection, Feed
from trading.observability import heartbeats
from trading.pubsub import as_text, names

HEARTBEAT_TTL_SECONDS = 10


def beat_name(venue: str) -> str:
    """The heartbeat process name of `venue`'s stream."""
    return f"stream:{venue}"


def events_key(venue: str) -> str:
    return names().venue_key(venue, "stream:events")


def recent_key(venue: str) -> str:
    return names().venue_key(venue, "stream:recent")


def record_event(client: redis.Redis, venue: str, kind: str, now_ms: int) -> None:
    """Count one event of `venue`'s stream, and keep it in the venue's window of recent events."""
    window_s = settings.STREAM_FAULT_WINDOW_SECONDS
    recent = recent_key(venue)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(events_key(venue), kind, 1)
    pipe.sadd(names().stream_venues, venue)
    pipe.zadd(recent, {f"{kind}:{now_ms}:{uuid.uuid4().hex[:8]}": now_ms})
    pipe.zremrangebyscore(recent, "-inf", now_ms - window_s * 1000)
    pipe.expire(recent, window_s + 60)
    pipe.execute()


def event_counts(client: redis.Redis, venues: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Every event ever counted of each venue's stream (of `venues`, or of every venue that has
    any), by kind, in two round trips at most."""
    if venues is None:
        venues = sorted(as_text(member) for member in client.smembers(names().stream_venues))
    pipe = client.pipeline(transaction=False)
    for venue in venues:
        pipe.hgetall(events_key(venue))
    counts = pipe.execute()
    return {
        venue: {as_text(kind): int(count) for kind, count in by_kind.items()}
        for venue, by_kind in zip(venues, counts, strict=True)
    }


def recent_events(client: redis.Redis, venue: str, now_ms: int) -> list[str]:
    """The kinds of `venue`'s stream events of the last STREAM_FAULT_WINDOW_SECONDS, oldest first."""
    since = now_ms - settings.STREAM_FAULT_WINDOW_SECONDS * 1000
    members = client.zrangebyscore(recent_key(venue), since, "+inf")
    return [as_text(member).split(":", 1)[0] for member in members if isinstance(member, bytes | str)]


def write_beat(client: redis.Redis, venue: str, body: dict[str, Any]) -> None:
    heartbeats.write(client, beat_name(venue), body, HEARTBEAT_TTL_SECONDS)


def remove_beat(client: redis.Redis, venue: str) -> None:
    heartbeats.remove(client, beat_name(venue))


def beats(client: redis.Redis, venues: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The stream heartbeat of each of `venues` (None: none), in one round trip."""
    found = heartbeats.read_many(client, [beat_name(venue) for venue in venues])
    return dict(zip(venues, found, strict=True))


def live(beat: Mapping[str, object] | None, now_ms: int) -> bool:
    return rules.stream_live(beat, now_ms, settings.STREAM_HEARTBEAT_MAX_AGE_MS)


def collections(client: redis.Redis, venues: Sequence[Mapping[str, Any]], now_ms: int) -> list[Collection]:
    """What a polling round does for each venue (its plan fields: name and feed), by its feed and
    whether its stream is live: one round trip for the streamed venues' heartbeats, none for
    venues that are only polled."""
    streamed = [fields["name"] for fields in venues if _feed(fields) != Feed.POLL]
    found = beats(client, streamed) if streamed else {}
    return [rules.collection(_feed(fields), live(found.get(fields["name"]), now_ms)) for fields in venues]


def _feed(fields: Mapping[str, Any]) -> str:
    return str(fields.get("feed") or Feed.POLL)
