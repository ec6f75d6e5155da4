"""Heartbeats: each running process says it is alive, in Redis, with an expiry.

A heartbeat is a JSON body under `names().heartbeat("<kind>:<name>")` (kind "listener", "worker",
"collector", "streamer" for a stream_prices process, or "stream" for one venue's stream, named by
the venue) that expires after its TTL, so a process that dies simply disappears. Each kind
also has an index (a sorted set scored by expiry time), so that reading every heartbeat of a kind
costs two round trips instead of a scan of the keyspace.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import redis

from trading.pubsub import Names, as_text, connect, names

log = logging.getLogger(__name__)
WORKER_HEARTBEAT_SECONDS = 5
WORKER_HEARTBEAT_TTL_SECONDS = 15
# Long enough to outlast a venue's longest back-off, so its last failure stays visible; freshness
# is judged from `last_quote_ms`, not from the heartbeat being there.
COLLECTOR_HEARTBEAT_TTL_SECONDS = 120
Kind = Literal["listener", "worker", "collector", "streamer", "stream"]


def write(client: redis.Redis, process: str, body: dict[str, Any], ttl: int, n: Names | None = None) -> None:
    """Store `body` as the heartbeat of `process` ("<kind>:<name>") for `ttl` seconds."""
    n = n or names()
    kind, _, name = process.partition(":")
    pipe = client.pipeline(transaction=False)
    pipe.set(n.heartbeat(process), json.dumps(body), ex=ttl)
    pipe.zadd(n.heartbeat_index(kind), {name: time.time() + ttl})
    pipe.execute()


def remove(client: redis.Redis, process: str, n: Names | None = None) -> None:
    """A process that stops cleanly says so at once, instead of waiting for its heartbeat to expire."""
    n = n or names()
    kind, _, name = process.partition(":")
    pipe = client.pipeline(transaction=False)
    pipe.delete(n.heartbeat(process))
    pipe.zrem(n.heartbeat_index(kind), name)
    pipe.execute()


def write_collector(client: redis.Redis, venue: str, published: int, error: str | None) -> None:
    """The end of one collection round of `venue`: whether it worked, how many books it published,
    and when the venue last gave a good book (carried over from the previous heartbeat when this
    round published none)."""
    process = f"collector:{venue}"
    now = _now_ms()
    previous = read(client, process) or {}
    body = {
        "venue": venue,
        "ok": error is None,
        "at_ms": now,
        "published": published,
        "last_quote_ms": now if published else previous.get("last_quote_ms"),
        "error": error,
    }
    write(client, process, body, COLLECTOR_HEARTBEAT_TTL_SECONDS)


def read(client: redis.Redis, process: str) -> dict[str, Any] | None:
    """The live heartbeat of one process ("<kind>:<name>"), or None."""
    return _decode(process, client.get(names().heartbeat(process)))


def read_many(client: redis.Redis, processes: list[str]) -> list[dict[str, Any] | None]:
    """The live heartbeats of `processes` ("<kind>:<name>" each), in one round trip: None for
    each that has none."""
    if not processes:
        return []
    n = names()
    bodies = client.mget([n.heartbeat(process) for process in processes])
    return [_decode(process, raw) for process, raw in zip(processes, bodies, strict=True)]


def read_all(client: redis.Redis, kind: Kind) -> dict[str, dict[str, Any]]:
    """Every live heartbeat of `kind`, keyed by the process's name within the kind (the part after
    "<kind>:", e.g. a worker's hostname). Expired entries are pruned from the index on the way."""
    n = names()
    index = n.heartbeat_index(kind)
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", time.time())
    pipe.zrange(index, 0, -1)
    members = [as_text(member) for member in pipe.execute()[1]]
    bodies = read_many(client, [f"{kind}:{name}" for name in members])
    return {name: body for name, body in zip(members, bodies, strict=True) if body is not None}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _decode(process: str, raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        log.warning("heartbeat of %s is not JSON: %r", process, raw[:200])
        return None
    if not isinstance(body, dict):
        log.warning("heartbeat of %s is not an object: %r", process, raw[:200])
        return None
    return body


class Beater:
    """A daemon thread that writes `body()` as the heartbeat of `process` every `interval` seconds
    with a `ttl`, until `stop()` removes it. Redis trouble is logged and retried on the next beat.
    `start()` returns once the first beat was tried, so the process is seen alive from then on."""

    def __init__(self, process: str, body: Callable[[], dict[str, Any]], interval: float, ttl: int) -> None:
        self.process = process
        self.body = body
        self.interval = interval
        self.ttl = ttl
        self._stopping = threading.Event()
        self._first_beat = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {process}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._first_beat.wait(timeout=self.interval)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        with connect() as client:
            while not self._stopping.is_set():
                self.beat(client)
                self._first_beat.set()
                self._stopping.wait(self.interval)
            try:
                remove(client, self.process)
            except redis.RedisError as exc:
                log.warning("heartbeat of %s left to expire: %s", self.process, exc)

    def beat(self, client: redis.Redis) -> None:
        try:
            write(client, self.process, self.body(), self.ttl)
        except redis.RedisError as exc:
            log.warning("heartbeat of %s not written: %s", self.process, exc)


def worker_beater(hostname: str) -> Beater:
    """The heartbeat of a Celery worker, written from its main process."""

    def body() -> dict[str, Any]:
        return {"hostname": hostname, "pid": os.getpid(), "at_ms": _now_ms()}

    return Beater(f"worker:{hostname}", body, WORKER_HEARTBEAT_SECONDS, WORKER_HEARTBEAT_TTL_SECONDS)
