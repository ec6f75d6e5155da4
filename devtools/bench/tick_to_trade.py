"""`manage.py bench tick-to-trade`: from a price event published to both of its orders received by
the venues, live, through every process on the way.

A real listener and a real Celery worker (their own processes, trading live with keys made for
the run) face the exchange emulator serving Binance and Kraken with no added latency. At a steady
rate the bench publishes a crossing book: the listener decides and dispatches, the worker claims,
re-checks, records and sends both legs through ccxt. The emulator notes when each order arrives;
the figure for an event is the later of its two arrivals less the moment it was published. Between
events a neutral book closes the crossing, so each event is one new opportunity.
"""

from __future__ import annotations

import base64
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from devtools.bench import BenchmarkUnavailable
from devtools.bench.common import (
    activate_strategy,
    child_env,
    emulated_venue,
    log_path,
    manage,
    percentile,
    spawn,
    stop,
    wait_for,
)
from devtools.emulator import Emulator, emulate
from trading import pubsub
from trading.clock import now_ms
from trading.core.types import Quote
from trading.credentials import credential_names
from trading.models import Balance, Opportunity, Order, Venue

SYMBOL = "BTC/USDT"
FEE = Decimal("0.0001")
FUNDS = {"BTC": Decimal(1000), "USDT": Decimal(100_000_000)}
TRADE_SIZE = Decimal("0.01")
# Kraken quotes around 60,000; binance dips below its bid for each event, and sits between events.
KRAKEN = (((Decimal("59995"), Decimal(10)),), ((Decimal("60005"), Decimal(10)),))
NEUTRAL = (((Decimal("59996"), Decimal(10)),), ((Decimal("60004"), Decimal(10)),))
CROSSING = (((Decimal("59940"), Decimal(10)),), ((Decimal("59950"), Decimal(10)),))
WARM_UP_EVENTS = 10


def run(out: Callable[[str], None], **options: Any) -> dict[str, float]:
    if connection.vendor != "postgresql":
        raise BenchmarkUnavailable("needs PostgreSQL (DATABASE_URL): the worker resumes with its locks")
    count, rate = options.get("events") or 200, options.get("rate") or 5
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-t2t-{tag}:"
    with emulate("binance", "kraken") as emulator:
        venues = _market(emulator, tag)
        keys = _accounts(emulator, venues)
        env = _child_env(prefix, keys)
        try:
            with _processes(env, out) as ready:
                ready()
                client = redis.Redis.from_url(settings.REDIS_URL)
                names = pubsub.Names(prefix)
                out(f"{WARM_UP_EVENTS} warm-up events, then {count} at {rate}/s ...")
                _events(client, names, emulator, venues, WARM_UP_EVENTS, rate)
                first = Opportunity.objects.filter(buy_venue__in=venues.values()).count()
                published = _events(client, names, emulator, venues, count, rate)
                latencies = _latencies(emulator, venues, published, first)
        finally:
            Venue.objects.filter(pk__in=[v.pk for v in venues.values()]).update(enabled=False)
    if not latencies:
        raise RuntimeError("no event reached the venues: see the worker's and the listener's output")
    return {
        "events": count,
        "traded": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "rate_per_s": rate,
    }


def _market(emulator: Emulator, tag: str) -> dict[str, Venue]:
    """The two emulated venues under names of this run, funded as their accounts, and an active
    strategy that trades 0.01 BTC on a 1 bps bar."""
    venues = {}
    for dialect in ("binance", "kraken"):
        venue = emulated_venue(emulator, dialect, f"bench-{dialect}-{tag}", FEE)
        for asset, amount in FUNDS.items():
            Balance.objects.create(venue=venue, asset=asset, free=amount)
        venues[dialect] = venue
    activate_strategy(
        symbols=[SYMBOL],
        min_profit_bps=Decimal(1),
        trade_size=TRADE_SIZE,
        ttl_ms=10_000,
        note="bench tick-to-trade",
    )
    return venues


def _accounts(emulator: Emulator, venues: dict[str, Venue]) -> dict[str, str]:
    """An emulator account per venue with keys made for the run: the environment carrying them."""
    keys = {}
    for dialect, venue in venues.items():
        key, secret = f"bench-key-{uuid.uuid4().hex}", _secret(dialect)
        emulator.add_account(dialect, key, secret, {asset: str(amount) for asset, amount in FUNDS.items()})
        emulator.set_taker_fee(dialect, FEE)
        key_name, secret_name = credential_names(venue.name)
        keys[key_name], keys[secret_name] = key, secret
    return keys


def _secret(dialect: str) -> str:
    raw = uuid.uuid4().hex.encode()
    return base64.b64encode(raw).decode() if dialect == "kraken" else raw.decode()


def _child_env(prefix: str, keys: dict[str, str]) -> dict[str, str]:
    return child_env(prefix, TRADING_MODE="live", LIVE_RATE_LIMITED="0", **keys)


@contextmanager
def _processes(env: dict[str, str], out: Callable[[str], None]) -> Iterator[Callable[[], None]]:
    """A worker on the trade queue and a listener, stopped on the way out; yields a function that
    waits until both are ready."""
    worker_log, listener_log = log_path(env, "bench-t2t-worker"), log_path(env, "bench-t2t-listener")
    worker = spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "arbsite",
            "worker",
            "-Q",
            "trade,default",
            "-c",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{os.getpid()}@%h",
            "-l",
            "INFO",
        ],
        env,
        worker_log,
    )
    listener = spawn(manage("listen_prices"), env, listener_log)

    def ready() -> None:
        wait_for(worker_log, "ready.", worker)
        wait_for(listener_log, "listening on", listener)
        out(f"worker and listener ready (logs: {worker_log}, {listener_log})")

    try:
        yield ready
    finally:
        stop((listener, worker))


def _events(
    client: redis.Redis,
    names: pubsub.Names,
    emulator: Emulator,
    venues: dict[str, Venue],
    count: int,
    rate: float,
) -> list[int]:
    """Publish `count` events at `rate` a second: a neutral binance book, a fresh kraken book,
    then the crossing binance book (timed). Returns when each crossing was published (ns): the
    moment its PUBLISH goes to Redis, its sequence number taken and its message encoded."""
    binance, kraken = venues["binance"].name, venues["kraken"].name
    emulator.set_book("kraken", SYMBOL, *KRAKEN)
    published: list[int] = []
    interval = 1 / rate
    started = time.monotonic()
    for index in range(count):
        _publish(client, names, emulator, "binance", binance, NEUTRAL)
        _publish(client, names, emulator, "kraken", kraken, KRAKEN)
        time.sleep(interval / 4)  # the listener closes the last crossing on these first
        emulator.set_book("binance", SYMBOL, *CROSSING)
        published.append(_publish(client, names, emulator, "binance", binance, CROSSING, set_book=False))
        time.sleep(max(0.0, started + (index + 1) * interval - time.monotonic()))
    time.sleep(1.0)  # the last trades settle
    return published


def _publish(
    client: redis.Redis,
    names: pubsub.Names,
    emulator: Emulator,
    dialect: str,
    venue: str,
    levels: tuple[tuple[tuple[Decimal, Decimal], ...], tuple[tuple[Decimal, Decimal], ...]],
    *,
    set_book: bool = True,
) -> int:
    """Publish `venue`'s book (the emulator's too, when `set_book`); when it was published (ns)."""
    if set_book:
        emulator.set_book(dialect, SYMBOL, *levels)
    seq = int(client.incr(names.sequence(venue, SYMBOL)))
    quote = Quote(venue, SYMBOL, levels[0], levels[1], received_ts=now_ms(), seq=seq)
    message = pubsub.encode_quote(quote)
    pipe = client.pipeline(transaction=False)
    pipe.publish(names.prices(SYMBOL), message)
    pipe.hset(names.latest_books(SYMBOL), venue, message)
    pipe.hset(names.latest_book_times(SYMBOL), venue, quote.timestamp)
    published = time.time_ns()
    pipe.execute()
    return published


def _latencies(emulator: Emulator, venues: dict[str, Venue], published: list[int], skip: int) -> list[float]:
    """Per timed event, ms from its publication to the later arrival of its two orders."""
    arrivals = {**emulator.order_arrivals("binance"), **emulator.order_arrivals("kraken")}
    opportunities = Opportunity.objects.filter(buy_venue__in=venues.values()).order_by("pk")[skip:]
    latencies = []
    for opportunity in opportunities:
        legs = Order.objects.filter(opportunity=opportunity, attempt=0).exclude(role=Order.Role.HEDGE)
        times = [
            arrivals[order.client_order_id].wall_ns for order in legs if order.client_order_id in arrivals
        ]
        detected = int(opportunity.detected_at.timestamp() * 1e9)
        sent = max((t for t in published if t <= detected + 1_000_000), default=None)
        if len(times) == 2 and sent is not None:
            latencies.append((max(times) - sent) / 1e6)
    return latencies
