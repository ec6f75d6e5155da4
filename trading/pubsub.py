"""Redis names, message encoding and the quote publisher.

Every channel and key carries the configured prefix, because Pub/Sub channels are server-wide.
Price channels are one per symbol (`<prefix>prices.BTC-USDT`), so a listener can own a set of
symbols by subscribing to exactly their channels, which also works with sharded Pub/Sub.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from trading.core import validate
from trading.core.types import Quote, StaleMark
from trading.core.validate import QuoteRejected, quote_to_payload, stale_to_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Names:
    """Channel and key names under one prefix."""

    prefix: str

    def prices(self, symbol: str) -> str:
        return f"{self.prefix}prices.{symbol.replace('/', '-')}"

    @property
    def prices_pattern(self) -> str:
        return f"{self.prefix}prices.*"

    @property
    def opportunity_events(self) -> str:
        return f"{self.prefix}events.opportunity"

    @property
    def trade_events(self) -> str:
        return f"{self.prefix}events.trade"

    @property
    def strategy_control(self) -> str:
        return f"{self.prefix}control.strategy"

    def sequence(self, venue: str, symbol: str) -> str:
        return f"{self.prefix}seq:{venue}:{symbol}"

    def latest_books(self, symbol: str) -> str:
        return f"{self.prefix}book:{symbol}"

    def latest_book_times(self, symbol: str) -> str:
        """When each venue's latest book of `symbol` was stamped (its `timestamp`, epoch ms)."""
        return f"{self.prefix}book-ts:{symbol}"

    @property
    def pending_quotes(self) -> str:
        return f"{self.prefix}quotes:pending"

    @property
    def dead_quotes(self) -> str:
        return f"{self.prefix}quotes:dead"

    @property
    def dead_quote_reasons(self) -> str:
        return f"{self.prefix}quotes:dead:reasons"

    @property
    def unstored_quotes(self) -> str:
        """Hash of books published but not queued for storage (the queue was full), by venue."""
        return f"{self.prefix}quotes:unstored"

    @property
    def collection_plan(self) -> str:
        return f"{self.prefix}collect:plan"

    @property
    def store_lock(self) -> str:
        return f"{self.prefix}quotes:store-lock"

    def decision_trace(self, listener: str) -> str:
        """List of `venue\tsymbol\tseq\twall_ns` of each book a listener decided on, while it traces
        them (LISTENER_TRACE_DECISIONS)."""
        return f"{self.prefix}listener:{listener}:decisions"

    def heartbeat(self, process: str) -> str:
        return f"{self.prefix}heartbeat:{process}"

    def heartbeat_index(self, kind: str) -> str:
        """Sorted set of the `kind` processes that wrote a heartbeat, scored by its expiry."""
        return f"{self.prefix}heartbeats:{kind}"

    def venue_key(self, venue: str, what: str) -> str:
        return f"{self.prefix}venue:{venue}:{what}"

    def band_mids(self, venue: str, symbol: str) -> str:
        """A venue's recent mids of `symbol`, newest first, which the price band judges by."""
        return self.venue_key(venue, f"mids:{symbol}")

    @property
    def stream_venues(self) -> str:
        """Set of the venues whose stream events are counted (trading.streams)."""
        return f"{self.prefix}stream:venues"


def names() -> Names:
    return Names(settings.ARB_PREFIX)


def connect() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


_shared: tuple[int, str, redis.Redis] | None = None


def shared() -> redis.Redis:
    """This process's client of REDIS_URL, kept for its life (a forked child opens its own): the
    trade path reads books on it without opening a connection each time."""
    global _shared
    if _shared is None or _shared[:2] != (os.getpid(), settings.REDIS_URL):
        _shared = (os.getpid(), settings.REDIS_URL, connect())
    return _shared[2]


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def encode_quote(quote: Quote) -> bytes:
    return encode(quote_to_payload(quote))


def encode_stale(mark: StaleMark) -> bytes:
    return encode(stale_to_payload(mark))


def decode_quote(raw: bytes | str) -> Quote:
    """Decode a price message. Raises QuoteRejected (reason bad_json, or parse_quote's reasons)."""
    return validate.decode_quote(raw)


def decode_price_event(raw: bytes | str) -> Quote | StaleMark:
    """Decode a message of a price channel: a book or a stale mark. Raises QuoteRejected."""
    return validate.decode_price_event(raw)


def reserve_sequences(client: redis.Redis, keys: Sequence[tuple[str, str]]) -> list[int]:
    """Next sequence number for each (venue, symbol) stream, in one round trip."""
    n = names()
    pipe = client.pipeline(transaction=False)
    for venue, symbol in keys:
        pipe.incr(n.sequence(venue, symbol))
    return [int(value) for value in pipe.execute()]


# Keep a venue's latest book only if it is no older than the one kept: two collection rounds
# that overlap can finish in the wrong order, and the older snapshot must not win.
KEEP_IF_NEWER = """
local kept = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if kept ~= nil and kept > tonumber(ARGV[2]) then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


# Queue books for storage while the queue holds fewer than ARGV[1]; count the others by venue.
# KEYS: pending queue, unstored counts. ARGV: the bound, then (venue, message) pairs.
# Returns how many were not queued.
BUFFER_SCRIPT = """
local room = tonumber(ARGV[1]) - redis.call("llen", KEYS[1])
local unstored = 0
for i = 2, #ARGV, 2 do
    if room > 0 then
        redis.call("rpush", KEYS[1], ARGV[i + 1])
        room = room - 1
    else
        redis.call("hincrby", KEYS[2], ARGV[i], 1)
        unstored = unstored + 1
    end
end
return unstored
"""


def publish_quotes(client: redis.Redis, quotes: Iterable[Quote], *, store: bool = True) -> int:
    """Publish each quote on its symbol's channel, keep it as the venue's latest book unless a
    newer one is kept already, and queue it for storage (unless `store` is off), all in one round
    trip. Returns how many were sent.

    The storage queue holds at most QUOTE_BUFFER_MAX books (while the database is away it only
    grows): past that a book is still published, and counted for its venue in
    `names().unstored_quotes` instead of being queued.
    """
    n = names()
    keep = client.register_script(KEEP_IF_NEWER)
    pipe = client.pipeline(transaction=False)
    queued: list[str | bytes] = []
    count = 0
    for quote in quotes:
        message = encode_quote(quote)
        pipe.publish(n.prices(quote.symbol), message)
        keys = [n.latest_books(quote.symbol), n.latest_book_times(quote.symbol)]
        keep(keys=keys, args=[quote.venue, quote.timestamp, message], client=pipe)
        queued += [quote.venue, message]
        count += 1
    if store and queued:
        buffer = client.register_script(BUFFER_SCRIPT)
        buffer(
            keys=[n.pending_quotes, n.unstored_quotes], args=[settings.QUOTE_BUFFER_MAX, *queued], client=pipe
        )
    results = pipe.execute()
    if store and queued and (unstored := int(results[-1])):
        log.warning(
            "storage queue full (%d): %d book(s) published but not stored",
            settings.QUOTE_BUFFER_MAX,
            unstored,
        )
    return count


def withdraw_books(client: redis.Redis, marks: Iterable[StaleMark]) -> None:
    """Withdraw each mark's venue book: publish the mark on its symbol's price channel (listeners
    drop the venue's book), and remove the venue's latest book (which the trade re-check reads)
    and its recent mids (which the price band judges by), in one transaction, so no reader sees
    the book gone from one place and still in the other."""
    n = names()
    pipe = client.pipeline(transaction=True)
    for mark in marks:
        pipe.hdel(n.latest_books(mark.symbol), mark.venue)
        pipe.hdel(n.latest_book_times(mark.symbol), mark.venue)
        pipe.delete(n.band_mids(mark.venue, mark.symbol))
        pipe.publish(n.prices(mark.symbol), encode_stale(mark))
    pipe.execute()


def latest_books(client: redis.Redis, symbol: str) -> dict[str, Quote]:
    """The most recent book of every venue for `symbol`, as last published; bad entries skipped."""
    books: dict[str, Quote] = {}
    for key, raw in client.hgetall(names().latest_books(symbol)).items():
        venue = as_text(key)
        try:
            books[venue] = decode_quote(raw)
        except QuoteRejected as exc:
            log.warning("latest %s book of %s unusable: %s", symbol, venue, exc)
    return books


def latest_book(client: redis.Redis, symbol: str, venue: str) -> Quote | None:
    """`venue`'s most recent `symbol` book as last kept, or None (none, or unusable)."""
    return latest_of(client, symbol, [venue]).get(venue)


def latest_of(client: redis.Redis, symbol: str, venues: Sequence[str]) -> dict[str, Quote]:
    """The most recent `symbol` books of `venues` that are kept and usable, in one round trip."""
    books: dict[str, Quote] = {}
    for venue, raw in zip(venues, client.hmget(names().latest_books(symbol), list(venues)), strict=True):
        if raw is None:
            continue
        try:
            books[venue] = decode_quote(raw)
        except QuoteRejected as exc:
            log.warning("latest %s book of %s unusable: %s", symbol, venue, exc)
    return books


def as_text(value: bytes | str) -> str:
    """A key or member as Redis answered it (bytes, or text from a client that decodes), as text."""
    return value.decode() if isinstance(value, bytes) else value


def publish_event(client: redis.Redis, channel: str, payload: dict[str, Any]) -> None:
    client.publish(channel, encode(payload))
