"""`manage.py bench listener`: the listener's ticks/s against a bare decoding subscriber, and
publish-to-decision latency at a steady rate, through real Redis Pub/Sub.

The publisher is a separate process so it does not share the interpreter lock with the
subscriber being measured. It keeps the backlog bounded, so the subscriber always has work and
Redis never drops it for an overfull output buffer.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import redis
from django.conf import settings
from django.db import transaction

from devtools.bench.common import activate_strategy, percentile
from devtools.bench.publisher import CHUNK, SYMBOL, VENUES, publish
from trading.listener import Listener
from trading.models import Balance, Venue
from trading.pubsub import Names


def _next(subscription: Any, timeout: float) -> dict[str, Any]:
    """The next published message; subscription confirmations are skipped (they read as None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = subscription.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is not None:
            return message  # type: ignore[no-any-return]
    raise RuntimeError(f"the bench stream stalled: no message within {timeout:.0f} s")


def _drain(
    subscription: Any, count: int, handle: Callable[[dict[str, Any]], None], ready: Any, drained: Any
) -> float:
    """Handle `count` price messages published in chunks; returns the seconds spent handling."""
    busy, seen = 0.0, 0
    while seen < count:
        ready.wait(timeout=120)  # the publisher builds its stream first
        ready.clear()
        chunk = min(CHUNK, count - seen)
        started = time.perf_counter()
        for _ in range(chunk):
            handle(_next(subscription, timeout=5.0))
        busy += time.perf_counter() - started
        seen += chunk
        drained.set()
    return busy


def _paced(subscription: Any, count: int, handle: Callable[[dict[str, Any]], None]) -> None:
    handle(_next(subscription, timeout=120.0))
    for _ in range(count - 1):
        handle(_next(subscription, timeout=5.0))


def _measure(
    names: Names,
    subscribe: Callable[[], Any],
    handle: Callable[[dict[str, Any]], None],
    count: int,
    rate: float = 0,
    sent: Any = None,
) -> float:
    """Publish `count` events from another process and handle them; returns seconds handling
    (for a paced run, the return value is not a throughput figure, and the publisher writes each
    event's send time into `sent`)."""
    context = multiprocessing.get_context("spawn")
    ready, drained = context.Event(), context.Event()
    subscription = subscribe()
    channel = names.prices(SYMBOL)
    publisher = context.Process(
        target=publish, args=(settings.REDIS_URL, channel, count, rate, ready, drained, sent)
    )
    publisher.start()
    try:
        if rate > 0:
            _paced(subscription, count, handle)
            return 0.0
        return _drain(subscription, count, handle, ready, drained)
    finally:
        publisher.join(timeout=30)
        subscription.close()


def _bench_market() -> None:
    activate_strategy(symbols=[SYMBOL], min_profit_bps=Decimal(5), trade_size=Decimal("0.1"))
    for name in VENUES:
        venue, _ = Venue.objects.get_or_create(name=name, defaults={"kind": Venue.Kind.SIMULATED})
        for asset, amount in (("BTC", "10"), ("USDT", "300000")):
            Balance.objects.update_or_create(venue=venue, asset=asset, defaults={"free": Decimal(amount)})


def run(out: Callable[[str], None], **options: Any) -> dict[str, float]:
    count = options.get("messages") or 200_000
    rate = options.get("rate") or 1_000
    client = redis.Redis.from_url(settings.REDIS_URL)
    names = Names(f"bench-{uuid.uuid4().hex[:8]}:")
    with transaction.atomic():
        _bench_market()
        listener = Listener(client, name="bench", names=names)
        listener.load_strategy()

        def tick(message: dict[str, Any]) -> None:
            listener.handle(message)
            listener.periodic()

        def bare_subscribe() -> Any:
            subscription = client.pubsub()
            subscription.psubscribe(names.prices_pattern)
            return subscription

        out(f"listener: {count} price events over {len(VENUES)} venues ...")
        listener_s = _measure(names, listener.subscribe, tick, count)
        out("bare redis-py subscriber (decode only) ...")
        # The fastest plain JSON decode there is, so the ratio errs on the side of modesty.
        baseline_s = _measure(names, bare_subscribe, lambda m: msgspec.json.decode(m["data"]), count)

        done: list[int] = []

        def timed(message: dict[str, Any]) -> None:
            listener.handle(message)
            done.append(time.monotonic_ns())

        latency_count = max(int(rate * 5), 1000)
        out(f"latency: {latency_count} events at {rate}/s ...")
        sent = multiprocessing.get_context("spawn").Array("q", latency_count, lock=False)
        _measure(names, listener.subscribe, timed, latency_count, rate=rate, sent=sent)
        # One publisher, so Pub/Sub delivers in order: the i-th handled is the i-th sent.
        latencies = [(end - start) / 1e6 for start, end in zip(sent, done, strict=True)]
        if listener.stats.rejected:
            raise RuntimeError(f"the bench stream was rejected: {dict(listener.stats.rejected)}")
        transaction.set_rollback(True)
    return {
        "listener_msgs_per_s": round(count / listener_s),
        "baseline_msgs_per_s": round(count / baseline_s),
        "ratio": round(baseline_s / listener_s, 3),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "messages": count,
        "opportunities": listener.stats.opportunities,
        "missed": listener.stats.missed,
    }
