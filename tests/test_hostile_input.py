"""Hostile input end to end: junk of every kind reaches real processes through real Redis, and
every message ends as a tick, a rejection counted by reason, or ignored; nothing stops a process.

The corpus is built from a fixed seed: arbitrary bytes, valid messages mutated byte by byte,
and messages that are well-formed but wrong (poisoned sequence numbers, absurd prices, lenient
numbers, unknown fields, books on another symbol's channel, unknown venues).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Child, child_env, make_venue
from tests.deadlines import wait_until
from tests.quotes import CHEAP, DEAR, FLAT, book
from trading import pubsub, storage
from trading.core.validate import REASONS, quote_to_payload
from trading.models import Opportunity
from trading.observability import heartbeats
from trading.pubsub import Names

CORPUS_SIZE = 4_000
CHUNK = 500
SEED = 20_260_101
NASTY = [
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b'"\\ud800"',
    b"1e999999",
    b"9" * 40,
    b"[" * 3000,
    b"null",
    b"NaN",
]
LISTENER_REASONS = REASONS | {
    "unknown_venue",
    "wrong_channel",
    "out_of_order",
    "seq_jump",
    "unconfirmed_stream",
    "price_band",
}


JUNK_VENUES = ("echo", "foxtrot")  # enabled venues the junk names; the real streams are alpha and bravo


def valid_payload(rng: random.Random, venue: str, seq: int) -> dict:
    mid = 30_000 + rng.randint(-20, 20)
    quote = book(venue, [(str(mid - 5), "1")], [(str(mid + 5), "1")], seq=seq)
    return quote_to_payload(quote)


def mutate(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randint(0, len(raw))
        edit = rng.choice(["flip", "insert", "delete", "nasty", "truncate"])
        if edit == "flip" and at < len(raw):
            raw[at] ^= 1 << rng.randint(0, 7)
        elif edit == "insert":
            raw[at:at] = rng.randbytes(rng.randint(1, 8))
        elif edit == "delete":
            del raw[at : at + rng.randint(1, 16)]
        elif edit == "nasty":
            raw[at : at + rng.randint(0, 4)] = rng.choice(NASTY)
        elif edit == "truncate":
            del raw[at:]
    return bytes(raw)


def wrong_but_well_formed(rng: random.Random, names: Names) -> tuple[str, bytes]:
    """A message that decodes but must not be traded on, and the channel it goes out on."""
    btc = names.prices("BTC/USDT")
    payload = valid_payload(rng, rng.choice(JUNK_VENUES), rng.randint(1, 50))
    kind = rng.randrange(7)
    if kind == 0:
        payload["seq"] = rng.choice([2**63 - 1, 2**62, 10**12])
    elif kind == 1:
        payload["bids"][0][0] = rng.choice([" 29990", "29_990", "\uff12\uff19\uff19\uff19\uff10", "+29990"])
    elif kind == 2:
        payload["note"] = "extra"
    elif kind == 3:
        return names.prices("ETH/USDT"), json.dumps(payload).encode()  # a BTC book on the ETH channel
    elif kind == 4:
        payload["venue"] = "nowhere"
    elif kind == 5:
        payload["symbol"] = "ETH/USDT"  # a symbol this listener does not own, on its channel
        return names.prices("ETH/USDT"), json.dumps(payload).encode()
    else:
        payload["bids"], payload["asks"] = [["NaN", "1"]], [["1e400", "1"]]
    return btc, json.dumps(payload).encode()


class Corpus:
    """(channel, message) pairs from a fixed seed. Every fourth message is a real book of alpha or
    bravo (flat, numbered in order), every eighth a book of charlie at twice the market (numbered
    in order too: it must be refused by the price band alone); the rest is junk, in equal parts
    arbitrary bytes (some on a junk channel under the pattern), mutated valid messages, and
    well-formed but wrong messages, on the junk venues."""

    def __init__(self, names: Names, size: int = CORPUS_SIZE, seed: int = SEED) -> None:
        self.names, self.size, self.rng = names, size, random.Random(seed)
        self.seqs: dict[str, int] = {}
        self.real = self.absurd = 0

    def numbered(self, venue: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> bytes:
        self.seqs[venue] = self.seqs.get(venue, 0) + 1
        return pubsub.encode_quote(book(venue, bids, asks, seq=self.seqs[venue]))

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        btc = self.names.prices("BTC/USDT")
        for i in range(self.size):
            if i % 8 in (0, 4):
                self.real += 1
                yield btc, self.numbered("alpha" if i % 8 == 0 else "bravo", *FLAT)
            elif i % 8 == 2 and i > 8:
                self.absurd += 1
                yield btc, self.numbered("charlie", [("60000", "1")], [("60010", "1")])
            else:
                yield self.junk(i % 3)

    def junk(self, kind: int) -> tuple[str, bytes]:
        rng, btc = self.rng, self.names.prices("BTC/USDT")
        if kind == 0:
            channel = btc if rng.random() < 0.9 else f"{self.names.prefix}prices.{rng.randbytes(4).hex()}"
            return channel, rng.randbytes(rng.randint(0, 300))
        if kind == 1:
            payload = valid_payload(rng, rng.choice(JUNK_VENUES), rng.randint(1, 50))
            return btc, mutate(rng, json.dumps(payload).encode())
        return wrong_but_well_formed(rng, self.names)


def listener_beat(client: redis.Redis, names: Names) -> dict:
    raw = client.get(names.heartbeat("listener:fuzz"))
    return json.loads(raw) if raw else {}


def accounted(beat: dict) -> int:
    """Messages the listener has dealt with: each is exactly one of these."""
    return beat.get("ticks", 0) + beat.get("ignored", 0) + sum(beat.get("rejected", {}).values())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_listener_process_counts_every_junk_message_and_keeps_deciding(
    market: None, spawn: Callable[..., Child], redis_client: redis.Redis, names: Names
) -> None:
    for venue in ("charlie", *JUNK_VENUES):
        make_venue(venue)
    listener = spawn(
        sys.executable, "manage.py", "listen_prices", "--name", "fuzz", name="listener", env=child_env()
    )
    listener.wait_for("listening", timeout=60)
    corpus = Corpus(names)
    messages = list(corpus)
    delivered = 0
    for first in range(0, len(messages), CHUNK):
        pipe = redis_client.pipeline(transaction=False)
        for channel, message in messages[first : first + CHUNK]:
            pipe.publish(channel, message)
        delivered += sum(pipe.execute())
        wait_until(
            lambda delivered=delivered: accounted(listener_beat(redis_client, names)) == delivered,
            timeout=60,
            what=f"{delivered} messages accounted for",
        )
    # Still deciding on the real streams: alpha's ask drops under bravo's bid.
    publish_real = [("alpha", CHEAP), ("bravo", DEAR)]
    redis_client.publish(names.prices("BTC/USDT"), corpus.numbered(publish_real[0][0], *publish_real[0][1]))
    redis_client.publish(names.prices("BTC/USDT"), corpus.numbered(publish_real[1][0], *publish_real[1][1]))
    wait_until(
        lambda: Opportunity.objects.filter(status="dispatched").exists(), what="a trade after the junk"
    )

    beat = listener_beat(redis_client, names)
    print(f"fuzz corpus: {len(messages)} messages, {delivered} delivered; listener: {json.dumps(beat)}")
    assert listener.proc.poll() is None
    assert delivered == len(messages)
    assert beat["errors"] == 0
    assert set(beat["rejected"]) <= LISTENER_REASONS
    assert {"bad_json", "malformed", "wrong_channel", "unknown_field", "seq_jump"} <= set(beat["rejected"])
    assert beat["ignored"] > 0
    # The real streams were never refused, and every book of the venue astray was.
    assert "alpha" not in beat["venue_rejected"]
    assert "bravo" not in beat["venue_rejected"]
    assert beat["venue_rejected"]["charlie"] == {"price_band": corpus.absurd}
    assert Opportunity.objects.filter(status="dispatched", buy_venue__name="alpha").count() == 1


# --- the other decoders, in process -----------------------------------------------------------


@pytest.mark.django_db
@settings(max_examples=300, deadline=None)
@given(batch=st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_the_storage_drain_sorts_any_bytes_into_quotes_and_named_dead_entries(batch: list[bytes]) -> None:
    quotes, dead = storage.sort_batch(storage.QuoteWriter(), batch)

    assert len(quotes) + len(dead) == len(batch)
    assert {entry.reason for entry in dead} <= REASONS | {"unknown_venue", "out_of_range"}


@pytest.mark.django_db
def test_junk_in_the_storage_queue_is_dead_lettered_and_the_rest_stored(
    redis_client: redis.Redis, names: Names
) -> None:
    make_venue("alpha")
    rng = random.Random(SEED)
    junk = [rng.randbytes(rng.randint(0, 100)) for _ in range(50)] + [b'{"venue":"\xff"}', b"[" * 60_000]
    good = [pubsub.encode_quote(book("alpha", *FLAT, seq=seq)) for seq in (1, 2)]
    redis_client.rpush(names.pending_quotes, good[0], *junk, good[1])

    assert storage.store_pending() == 2

    assert redis_client.llen(names.pending_quotes) == 0
    assert redis_client.llen(names.dead_quotes) == len(junk)


def test_unreadable_latest_books_and_heartbeats_are_skipped(redis_client: redis.Redis, names: Names) -> None:
    redis_client.hset(names.latest_books("BTC/USDT"), mapping={"alpha": b"\xff\xfe", "bravo": b"[" * 60_000})
    redis_client.set(names.heartbeat("listener:junk"), b"\xff" + b"[" * 100_000, ex=10)
    redis_client.zadd(names.heartbeat_index("listener"), {"junk": 10**10})

    assert pubsub.latest_books(redis_client, "BTC/USDT") == {}
    assert heartbeats.read_all(redis_client, "listener") == {}


def test_a_valid_message_is_in_the_corpus_generator_too(names: Names) -> None:
    """The mutations start from messages the listener would take: the corpus reaches deep checks."""
    rng = random.Random(SEED)
    payload = valid_payload(rng, "alpha", 1)

    assert pubsub.decode_quote(json.dumps(payload)).best_bid == Decimal(payload["bids"][0][0])
