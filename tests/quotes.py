"""Crafting and publishing quotes the way the collector does, for tests."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import redis

from trading import pubsub
from trading.config import now_ms
from trading.core.types import Quote


def book(venue: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], **fields: object) -> Quote:
    """A Quote for BTC/USDT stamped now; levels given as (price, amount) strings."""
    values: dict[str, object] = {
        "venue": venue,
        "symbol": "BTC/USDT",
        "bids": tuple((Decimal(p), Decimal(a)) for p, a in bids),
        "asks": tuple((Decimal(p), Decimal(a)) for p, a in asks),
        "received_ts": now_ms(),
        "seq": 0,
    }
    values.update(fields)
    return Quote(**values)  # type: ignore[arg-type]


def publish(client: redis.Redis, *quotes: Quote) -> None:
    """Number each quote on its stream and publish it, exactly as a collector would."""
    seqs = pubsub.reserve_sequences(client, [(q.venue, q.symbol) for q in quotes])
    pubsub.publish_quotes(client, [dataclasses.replace(q, seq=s) for q, s in zip(quotes, seqs, strict=True)])
