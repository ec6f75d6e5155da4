"""Redis names, message encoding and the quote publisher.

Every channel and key carries the configured prefix, because Pub/Sub channels are server-wide.
Price channels are one per symbol (`<prefix>prices.BTC-USDT`), so a listener can own a set of
symbols by subscribing to exactly their channels, which also works with sharded Pub/Sub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from trading.core import validate
from trading.core.types import Quote
from trading.core.validate import QuoteRejected, quote_to_payload

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

    def heartbeat(self, process: str) -> str:
        return f"{self.prefix}heartbeat:{process}"

    def heartbeat_index(self, kind: str) -> str:
        """Sorted set of the `kind` processes that wrote a heartbeat, scored by its expiry."""
        return f"{self.prefix}heartbeats:{kind}"

    def venue_key(self, venue: str, what: str) -> str:
        return f"{self.prefix}venue:{venue}:{what}"


def names() -> Names:
    return Names(settings.ARB_PREFIX)


def connect() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def encode_quote(quote: Quote) -> bytes:
    return encode(quote_to_payload(quote))


def decode_quote(raw: bytes | str) -> Quote:
    """Decode a price message. Raises QuoteRejected (reason bad_json, or parse_quote's reasons)."""
    return validate.decode_quote(raw)


def reserve_sequences(client: redis.Redis, keys: Sequence[tuple[str, str]]) -> list[int]:
    """Next sequence number for each (venue, symbol) stream, in one round trip."""
    n = names()
    pipe = client.pipeline(transaction=False)
    for venue, symbol in keys:
        pipe.incr(n.sequence(venue, symbol))
    return [int(value) for value in pipe.execute()]


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
    """Publish each quote on its symbol's channel, keep it as the venue's latest book, and queue
    it for storage (unless `store` is off), all in one round trip. Returns how many were sent.

    The storage queue holds at most QUOTE_BUFFER_MAX books (while the database is away it only
    grows): past that a book is still published, and counted for its venue in
    `names().unstored_quotes` instead of being queued.
    """
    n = names()
    pipe = client.pipeline(transaction=False)
    queued: list[str | bytes] = []
    count = 0
    for quote in quotes:
        message = encode_quote(quote)
        pipe.publish(n.prices(quote.symbol), message)
        pipe.hset(n.latest_books(quote.symbol), quote.venue, message)
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


def latest_books(client: redis.Redis, symbol: str) -> dict[str, Quote]:
    """The most recent book of every venue for `symbol`, as last published; bad entries skipped."""
    books: dict[str, Quote] = {}
    for venue, raw in client.hgetall(names().latest_books(symbol)).items():
        try:
            books[venue.decode()] = decode_quote(raw)
        except QuoteRejected as exc:
            log.warning("latest %s book of %s unusable: %s", symbol, venue.decode(), exc)
    return books


def publish_event(client: redis.Redis, channel: str, payload: dict[str, Any]) -> None:
    client.publish(channel, encode(payload))
