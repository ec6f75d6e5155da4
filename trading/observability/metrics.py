"""Prometheus metrics, and their exposition for `/metrics`.

Worker processes (each Celery prefork child) increment prometheus-client counters. With
PROMETHEUS_MULTIPROC_DIR set (the demo and the tests set it; a deployment must give all the
processes the same directory: a volume shared by the containers of a deployment), each process
keeps its values in a file there, named by host and pid, and `/metrics` adds them up. Without
it, `/metrics` shows only the web process's own.

The listener's per-tick figures (ticks, sequence gaps, rejections, decision latency) are counted
in plain Python and travel in its heartbeat, which `/metrics` reads from Redis: a multiprocess
metric costs a locked file write per update, too much on the hot path, and this way a listener on
another host is included too. Those series restart from zero when a listener restarts, as
Prometheus counters may.

Trades and realized PnL are read from the database at scrape time: they are the durable record,
and a restart does not reset them. The storage queue's length and the books it could not take are
read from Redis. A scrape answers with whatever it can reach: `arb_metrics_source_up{source}` is 1
for each source (database, redis) that answered and 0 for one that did not, whose series are then
left out rather than failing the scrape.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
from django.db import Error as DatabaseError
from django.db.models import Count, Sum
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from trading import streams
from trading.observability import heartbeats
from trading.pubsub import connect, names

log = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_VARIABLE)


# prometheus-client goes multiprocess when the variable merely exists, and writes into the directory
# as soon as a metric below is created: an empty value would scatter files in the working directory.
_directory = multiprocess_dir()
if _directory == "":
    raise ImproperlyConfigured(f"{MULTIPROC_DIR_VARIABLE} is set but empty: unset it or name a directory")
if _directory:
    os.makedirs(_directory, exist_ok=True)
    # Containers of one deployment share the directory through a volume, and their process ids
    # repeat (each container counts from 1), so each process names its files by host and pid.
    values.ValueClass = values.MultiProcessValue(
        process_identifier=lambda: f"{socket.gethostname().replace('_', '-')}-{os.getpid()}"
    )

QUOTES_PUBLISHED = Counter("arb_quotes_published", "Validated books published, by venue", ["venue"])
COLLECT_FAILURES = Counter("arb_collect_failures", "Collection rounds that failed, by venue", ["venue"])
OPPORTUNITIES = Counter(
    "arb_opportunities", "Opportunities reaching each status (opened, then finished)", ["status"]
)
TASK_FAILURES = Counter("arb_task_failures", "Celery tasks that raised, by task name", ["task"])
UNKNOWN_FEES = Counter(
    "arb_unknown_fees", "Orders whose fee could not be stated or valued in the quote currency", ["venue"]
)
RESUMED = Counter("arb_opportunities_resumed", "Opportunities in flight taken over from a worker that died")
RECORD_WAITS = Counter(
    "arb_record_waits", "Times a trade task found its opportunity not recorded yet and waited for it"
)
BOOKS_REJECTED = Counter(
    "arb_books_rejected",
    "Books a collector refused (invalid, or off the price band), by venue and reason",
    ["venue", "reason"],
)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class LocalHistogram:
    """Observations counted in this process only (a list increment each), for a heartbeat to carry.
    `counts[i]` is the number of observations in bucket i (not cumulative); the last is +Inf."""

    buckets: tuple[float, ...] = DECISION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DECISION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.total}


# The listener heartbeat's plain counters, each exported per listener: (field, metric, help).
LISTENER_COUNTERS = (
    ("ticks", "arb_ticks", "Price events that updated a book and ran the strategy"),
    ("missed", "arb_sequence_gap_messages", "Price messages that sequence gaps say Pub/Sub never delivered"),
    (
        "restarts",
        "arb_sequence_restarts",
        "Streams followed anew after their next books confirmed a new numbering",
    ),
    ("ignored", "arb_listener_ignored", "Price events for symbols the listener does not own"),
    ("crossings", "arb_listener_crossings", "Distinct crossings of two venues' books the listener saw"),
    ("opportunities", "arb_listener_opportunities", "Opportunities opened (a settled crossing re-arms)"),
    ("dispatched", "arb_listener_dispatched", "Opportunities sent for execution"),
    ("errors", "arb_listener_errors", "Steps that failed (database, Redis, or a fault), each logged"),
    ("reconnects", "arb_listener_reconnects", "Times the listener lost Redis and subscribed again"),
)


class Sources:
    """Which sources one scrape reached: each collector says, `SourceStatus` reports."""

    def __init__(self) -> None:
        self.up: dict[str, bool] = {}

    def reached(self, source: str, ok: bool) -> None:
        self.up[source] = self.up.get(source, True) and ok


class SourceStatus:
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "arb_metrics_source_up", "1 when this scrape could read the source, else 0", labels=["source"]
        )
        for source, ok in sorted(self.sources.up.items()):
            gauge.add_metric([source], 1 if ok else 0)
        yield gauge


class ListenerStats:
    """Each live listener's counters and decision latency, from its heartbeat, labelled by name."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources or Sources()

    def collect(self) -> Iterator[Metric]:
        try:
            with connect() as client:
                beats = heartbeats.read_all(client, "listener")
        except redis.RedisError as exc:
            log.warning("listener figures left out of /metrics: %s", exc)
            self.sources.reached("redis", False)
            return
        self.sources.reached("redis", True)
        counters = {
            field: CounterMetricFamily(name, text, labels=["listener"])
            for field, name, text in LISTENER_COUNTERS
        }
        rejected = CounterMetricFamily(
            "arb_price_events_rejected", "Price events refused, by reason", labels=["listener", "reason"]
        )
        by_venue = CounterMetricFamily(
            "arb_venue_price_events_rejected",
            "Decoded price events refused, by venue and reason",
            labels=["listener", "venue", "reason"],
        )
        stale = CounterMetricFamily(
            "arb_listener_stale_books",
            "Venue books the listener dropped on a stale mark (their stream broke), by venue and kind",
            labels=["listener", "venue", "kind"],
        )
        latency = HistogramMetricFamily(
            "arb_decision_seconds",
            "Time from a decoded price event to its decisions recorded",
            labels=["listener"],
        )
        for name, beat in sorted(beats.items()):
            for key, family in counters.items():
                family.add_metric([name], beat.get(key, 0))
            for reason, count in beat.get("rejected", {}).items():
                rejected.add_metric([name, reason], count)
            _add_by_venue(by_venue, name, beat.get("venue_rejected", {}))
            _add_by_venue(stale, name, beat.get("stale", {}))
            if "decision_seconds" in beat:
                latency.add_metric([name], *_histogram(beat["decision_seconds"]))
        yield from (*counters.values(), rejected, by_venue, stale, latency)


def _add_by_venue(family: CounterMetricFamily, listener: str, counts: dict[str, dict[str, int]]) -> None:
    """A listener's counts by venue and what ({venue: {what: count}}) as the family's samples."""
    for venue, by_what in counts.items():
        for what, count in by_what.items():
            family.add_metric([listener, venue, what], count)


class StreamStats:
    """Each streamed venue's books published and whether its stream is live, from its stream
    heartbeat; and every event of each venue's stream by kind, as counted in Redis."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        try:
            with connect() as client:
                beats = heartbeats.read_all(client, "stream")
                events = streams.event_counts(client)
        except redis.RedisError as exc:
            log.warning("stream figures left out of /metrics: %s", exc)
            self.sources.reached("redis", False)
            return
        self.sources.reached("redis", True)
        updates = CounterMetricFamily(
            "arb_stream_updates", "Streamed books published, by venue", labels=["venue", "streamer"]
        )
        live = GaugeMetricFamily(
            "arb_stream_live", "1 while the venue's stream is live, else 0", labels=["venue"]
        )
        now = time.time_ns() // 1_000_000
        for venue, beat in sorted(beats.items()):
            updates.add_metric([venue, str(beat.get("streamer", ""))], int(beat.get("published", 0)))
            live.add_metric([venue], 1 if streams.live(beat, now) else 0)
        counted = CounterMetricFamily(
            "arb_stream_events",
            "Events of venues' streams by kind: faults (each withdrew the venue's books and resynced "
            "it) and cross-check mismatches",
            labels=["venue", "kind"],
        )
        for venue, kinds in sorted(events.items()):
            for kind, count in sorted(kinds.items()):
                counted.add_metric([venue, kind], count)
        yield from (updates, live, counted)


class StorageQueue:
    """Books waiting in Redis to be stored, and those the queue could not take, by venue."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        n = names()
        try:
            with connect() as client:
                pipe = client.pipeline(transaction=False)
                pipe.llen(n.pending_quotes)
                pipe.hgetall(n.unstored_quotes)
                pipe.hgetall(n.dead_quote_reasons)
                waiting, unstored, dead = pipe.execute()
        except redis.RedisError as exc:
            log.warning("storage queue figures left out of /metrics: %s", exc)
            self.sources.reached("redis", False)
            return
        self.sources.reached("redis", True)
        yield GaugeMetricFamily("arb_quotes_buffered", "Books waiting in Redis to be stored", value=waiting)
        lost = CounterMetricFamily(
            "arb_quotes_unstored",
            "Books published but not stored: the storage queue was full",
            labels=["venue"],
        )
        for venue, count in sorted(unstored.items()):
            lost.add_metric([venue.decode()], int(count))
        yield lost
        refused = CounterMetricFamily(
            "arb_quotes_dead", "Queued books that could not be stored, by reason", labels=["reason"]
        )
        for reason, count in sorted(dead.items()):
            refused.add_metric([reason.decode()], int(count))
        yield refused


def _histogram(data: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """A LocalHistogram's dict as Prometheus cumulative buckets (with +Inf) and sum."""
    bounds = [*(str(bound) for bound in data["buckets"]), "+Inf"]
    return list(zip(bounds, accumulate(data["counts"]), strict=True)), data["sum"]


class TradeTotals:
    """Trades and realized PnL by mode, from the trade table (one aggregate query per scrape)."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources or Sources()

    def collect(self) -> Iterator[Metric]:
        from trading.models import Trade  # metrics load before Django's app registry in Celery

        trades = CounterMetricFamily("arb_trades", "Trades recorded, by mode", labels=["mode"])
        pnl = GaugeMetricFamily(
            "arb_realized_pnl", "Sum of realized PnL (quote currency), by mode", labels=["mode"]
        )
        try:
            rows = list(
                Trade.objects.values("mode").annotate(count=Count("pk"), pnl=Sum("realized_pnl")).order_by()
            )
        except DatabaseError as exc:
            log.warning("trade figures left out of /metrics: %s", str(exc).strip()[:200])
            self.sources.reached("database", False)
            return
        self.sources.reached("database", True)
        for row in rows:
            trades.add_metric([row["mode"]], row["count"])
            pnl.add_metric([row["mode"]], float(row["pnl"] or 0))
        yield trades
        yield pnl


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every process's metrics and of what the database and Redis hold,
    and its content type. Never fails for a source that does not answer: it says so instead."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # a registry is a collector of its own metrics
    sources = Sources()
    registry.register(TradeTotals(sources))
    registry.register(ListenerStats(sources))
    registry.register(StorageQueue(sources))
    registry.register(StreamStats(sources))
    registry.register(SourceStatus(sources))  # last: it reports what the others reached
    return generate_latest(registry), CONTENT_TYPE_LATEST
