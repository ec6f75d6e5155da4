"""The benchmark's publisher process: it imports no Django, so it starts fast under `spawn`."""

from __future__ import annotations

import json
import random
import time
from decimal import Decimal
from typing import Any

import redis

from trading.core.types import Quote
from trading.core.validate import quote_to_payload

VENUES = [f"bench-{i}" for i in range(5)]
SYMBOL = "BTC/USDT"
# Small enough to sit in Redis's output buffer for one subscriber (8 MB soft limit).
CHUNK = 10_000


def stream(count: int, seed: int = 1) -> list[bytes]:
    """`count` price events over five venues: a shared random walk with per-venue noise and
    spreads of a few bps, so books seldom cross (as in a calm market)."""
    rng = random.Random(seed)
    mid, seqs, messages = 30_000.0, dict.fromkeys(VENUES, 0), []
    for i in range(count):
        mid *= 1 + rng.gauss(0, 0.00005)
        venue = VENUES[i % len(VENUES)]
        seqs[venue] += 1
        center = mid * (1 + rng.gauss(0, 0.00003))
        bids = tuple((Decimal(f"{center * (1 - 0.0002 * (k + 1)):.2f}"), Decimal("0.5")) for k in range(5))
        asks = tuple((Decimal(f"{center * (1 + 0.0002 * (k + 1)):.2f}"), Decimal("0.5")) for k in range(5))
        quote = Quote(venue, SYMBOL, bids, asks, received_ts=0, seq=seqs[venue])
        messages.append(quote_to_payload(quote))
    return [json.dumps(m, separators=(",", ":")).encode() for m in messages]


def publish(
    url: str, channel: str, count: int, rate: float, ready: Any, drained: Any, sent: Any = None
) -> None:
    """Publisher process. With `rate` > 0: one event at a time at that pace, the monotonic time each
    was sent (ns) written to `sent[i]` (for latency; messages carry nothing but the quote, which
    the listener's strict schema requires). Otherwise in chunks: publish a chunk, signal `ready`,
    and wait until the subscriber has `drained` it, so that draining is timed with nothing else
    competing."""
    client = redis.Redis.from_url(url)
    messages = stream(count)
    if rate > 0:
        _paced(client, channel, messages, rate, sent)
        return
    for first in range(0, len(messages), CHUNK):
        pipe = client.pipeline(transaction=False)
        for message in messages[first : first + CHUNK]:
            pipe.publish(channel, message)
        pipe.execute()
        ready.set()
        drained.wait()
        drained.clear()


def _paced(client: redis.Redis, channel: str, messages: list[bytes], rate: float, sent: Any) -> None:
    start = time.monotonic()
    for i, message in enumerate(messages):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        sent[i] = time.monotonic_ns()
        client.publish(channel, message)
