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
and a restart does not reset them.
"""

from __future__ import annotations

import logging
import os
import socket
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
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

from trading.observability import heartbeats
from trading.pubsub import connect

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


class ListenerStats:
    """Each live listener's counters and decision latency, from its heartbeat, labelled by name."""

    def collect(self) -> Iterator[Metric]:
        try:
            with connect() as client:
                beats = heartbeats.read_all(client, "listener")
        except redis.RedisError as exc:
            log.warning("listener figures left out of /metrics: %s", exc)
            return
        ticks = CounterMetricFamily(
            "arb_ticks", "Price events that updated a book and ran the strategy", labels=["listener"]
        )
        gaps = CounterMetricFamily(
            "arb_sequence_gap_messages",
            "Price messages that sequence gaps say Pub/Sub never delivered",
            labels=["listener"],
        )
        rejected = CounterMetricFamily(
            "arb_price_events_rejected", "Price events refused, by reason", labels=["listener", "reason"]
        )
        latency = HistogramMetricFamily(
            "arb_decision_seconds",
            "Time from a decoded price event to its decisions recorded",
            labels=["listener"],
        )
        for name, beat in sorted(beats.items()):
            ticks.add_metric([name], beat.get("ticks", 0))
            gaps.add_metric([name], beat.get("missed", 0))
            for reason, count in beat.get("rejected", {}).items():
                rejected.add_metric([name, reason], count)
            if "decision_seconds" in beat:
                latency.add_metric([name], *_histogram(beat["decision_seconds"]))
        yield from (ticks, gaps, rejected, latency)


def _histogram(data: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """A LocalHistogram's dict as Prometheus cumulative buckets (with +Inf) and sum."""
    bounds = [*(str(bound) for bound in data["buckets"]), "+Inf"]
    return list(zip(bounds, accumulate(data["counts"]), strict=True)), data["sum"]


class TradeTotals:
    """Trades and realized PnL by mode, from the trade table (one aggregate query per scrape)."""

    def collect(self) -> Iterator[Metric]:
        from trading.models import Trade  # metrics load before Django's app registry in Celery

        trades = CounterMetricFamily("arb_trades", "Trades recorded, by mode", labels=["mode"])
        pnl = GaugeMetricFamily(
            "arb_realized_pnl", "Sum of realized PnL (quote currency), by mode", labels=["mode"]
        )
        rows = Trade.objects.values("mode").annotate(count=Count("pk"), pnl=Sum("realized_pnl")).order_by()
        for row in rows:
            trades.add_metric([row["mode"]], row["count"])
            pnl.add_metric([row["mode"]], float(row["pnl"] or 0))
        yield trades
        yield pnl


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every process's metrics and the database totals, and its content type."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # a registry is a collector of its own metrics
    registry.register(TradeTotals())
    registry.register(ListenerStats())
    return generate_latest(registry), CONTENT_TYPE_LATEST
