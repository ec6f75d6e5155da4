"""Crafting and publishing quotes the way the collector does, for tests."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import redis

from trading import pubsub
from trading.clock import now_ms
from trading.core.types import Quote
from trading.listener import Listener
from trading.models import Opportunity

# (bids, asks) of BTC/USDT books: alpha CHEAP against bravo DEAR is a 100 USDT gap; FLAT crosses
# neither of them.
CHEAP = [("29990", "1")], [("30000", "1")]
DEAR = [("30100", "1")], [("30110", "1")]
FLAT = [("29995", "1")], [("30005", "1")]


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


def open_known_gap(client: redis.Redis) -> Opportunity:
    """With the `market` fixture: alpha sells at 30000 and bravo buys at 30100, and a listener
    opens (and dispatches) the 0.5 BTC opportunity that makes. Returns it."""
    publish(client, book("alpha", *CHEAP), book("bravo", *DEAR))
    listener = Listener(client)
    listener.load_strategy()
    for quote in pubsub.latest_books(client, "BTC/USDT").values():
        listener.on_price(pubsub.encode_quote(quote), now_ms())
    return Opportunity.objects.latest("pk")
