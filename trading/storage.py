"""Quote storage: the quote writer, the drain of the pending queue, and pruning.

Collectors queue every published quote on a Redis list (`names().pending_quotes`); `store_pending`
moves the list into the quote table in batches, with PostgreSQL binary COPY. Storage is at least
once: a batch leaves the list only after its rows are committed, so a crash between the commit and
the trim stores that batch again on the next drain (the copies share venue, symbol and seq) instead
of losing it. A duplicate in an append-only record is easy to spot; a hole is not.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import postgres, pq, sql
from psycopg.adapt import Dumper
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from trading import pubsub
from trading.core.types import Quote
from trading.core.validate import QuoteRejected
from trading.models import Quote as QuoteRow
from trading.models import Venue

log = logging.getLogger(__name__)

# Each column of a row, in order, with its PostgreSQL type: binary COPY applies no casts.
COPY_LAYOUT = (
    ("venue_id", "int8"),
    ("symbol", "varchar"),
    ("bid", "numeric"),
    ("bid_size", "numeric"),
    ("ask", "numeric"),
    ("ask_size", "numeric"),
    ("depth", "jsonb"),  # JSON text, see JsonbTextDumper
    ("venue_ts", "timestamptz"),
    ("received_at", "timestamptz"),
    ("seq", "int8"),
)
COPY_COLUMNS = tuple(column for column, _ in COPY_LAYOUT)
COPY_TYPES = tuple(pg_type for _, pg_type in COPY_LAYOUT)
Row = tuple[int, str, Decimal, Decimal, Decimal, Decimal, str, datetime | None, datetime, int]
COPY_SQL = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
    table=sql.Identifier(QuoteRow._meta.db_table),
    columns=sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)),
)

LEVEL_JSON = '["%s","%s"]'
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EPOCH_MS = int((datetime.max.replace(tzinfo=UTC) - EPOCH) / timedelta(milliseconds=1))
MAX_SEQ = 2**63 - 1
_price_field = QuoteRow._meta.get_field("bid")
MAX_DIGITS, DECIMAL_PLACES = _price_field.max_digits, _price_field.decimal_places
MAX_INTEGER_DIGITS = MAX_DIGITS - DECIMAL_PLACES
_symbol_length = QuoteRow._meta.get_field("symbol").max_length
assert _symbol_length is not None, "the quote table's symbol column has a length"
MAX_SYMBOL_LENGTH = _symbol_length

# The lock outlives any one batch by far; it is renewed before each batch of a long drain.
STORE_LOCK_SECONDS = 60

# Trim the drained entries and dead-letter the unstorable ones in one step, and only while the
# caller still holds the storage lock: a flusher whose lock expired must not trim entries that the
# next flusher has read but not yet stored.
# KEYS: lock, pending, dead, dead reasons. ARGV: lock token, entries taken, then (reason, raw) pairs.
SETTLE_SCRIPT = """
if redis.call("get", KEYS[1]) ~= ARGV[1] then
    return 0
end
for i = 3, #ARGV, 2 do
    redis.call("rpush", KEYS[3], ARGV[i + 1])
    redis.call("hincrby", KEYS[4], ARGV[i], 1)
end
redis.call("ltrim", KEYS[2], ARGV[2], -1)
return 1
"""


class UnknownVenue(LookupError):
    """A quote names a venue that is not in the Venue table."""


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """A queued message that cannot be stored, and why (`reason` is a short name for counting)."""

    raw: bytes | str
    reason: str
    detail: str


class JsonbTextDumper(Dumper):
    """Sends JSON text that is already built as binary jsonb: format version 1, then the text.

    Registered by oid only, for COPY after set_types; psycopg's own jsonb dumper would serialize
    the text again as a JSON string.
    """

    format = pq.Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


def depth_text(quote: Quote) -> str:
    """The depth column as JSON text, {"bids": [[price, amount], ...], "asks": [...]}, every level
    with prices and amounts as exact decimal strings.

    Formatted by hand because this runs for every stored quote and is twice as fast as json.dumps
    of lists; a Decimal's str never holds a character that JSON would escape.
    """
    bids = ",".join([LEVEL_JSON % level for level in quote.bids])
    asks = ",".join([LEVEL_JSON % level for level in quote.asks])
    return f'{{"bids":[{bids}],"asks":[{asks}]}}'


def quote_row(venue_id: int, quote: Quote) -> Row:
    """One COPY row, columns in COPY_COLUMNS order. Timestamps are exact (integer arithmetic)."""
    bid, bid_size = quote.bids[0]
    ask, ask_size = quote.asks[0]
    venue_ts = None if quote.venue_ts is None else EPOCH + timedelta(milliseconds=quote.venue_ts)
    received_at = EPOCH + timedelta(milliseconds=quote.received_ts)
    return (
        venue_id,
        quote.symbol,
        bid,
        bid_size,
        ask,
        ask_size,
        depth_text(quote),
        venue_ts,
        received_at,
        quote.seq,
    )


def quote_model(row: Row) -> QuoteRow:
    """The model instance for a row, for databases without COPY."""
    venue_id, symbol, bid, bid_size, ask, ask_size, depth, venue_ts, received_at, seq = row
    return QuoteRow(
        venue_id=venue_id,
        symbol=symbol,
        bid=bid,
        bid_size=bid_size,
        ask=ask,
        ask_size=ask_size,
        depth=json.loads(depth),
        venue_ts=venue_ts,
        received_at=received_at,
        seq=seq,
    )


def copy_rows(connection: BaseDatabaseWrapper, rows: Iterable[Row]) -> None:
    """Binary COPY of `rows` into the quote table on a PostgreSQL connection, in its current
    transaction (in autocommit mode the COPY commits as one statement). psycopg errors surface as
    Django's database errors."""
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.cursor.adapters.register_dumper(None, JsonbTextDumper)
        with cursor.cursor.copy(COPY_SQL) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)


class QuoteWriter:
    """Writes batches of core Quotes into the quote table of one database.

    Venue ids are cached and reloaded when a name is missing. Keep one writer for one drain, not
    for the life of a process: a venue deleted and created again has a new id.
    """

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using
        self._venue_ids: dict[str, int] = {}

    def unknown_venues(self, names: Iterable[str]) -> set[str]:
        """The names among `names` that no Venue has. Reloads the venue ids (once) on a miss."""
        missing = set(names).difference(self._venue_ids)
        if missing:
            self._venue_ids = dict(Venue.objects.using(self.using).values_list("name", "pk"))
            missing.difference_update(self._venue_ids)
        return missing

    def rows(self, quotes: Sequence[Quote]) -> Iterator[Row]:
        """The COPY rows for `quotes`, in order, built as they are consumed (so that a large batch
        is never held twice in memory). Raises UnknownVenue at once if a venue is not in the table."""
        unknown = self.unknown_venues({quote.venue for quote in quotes})
        if unknown:
            raise UnknownVenue(f"no venue named {', '.join(sorted(unknown))}")
        venue_ids = self._venue_ids
        return (quote_row(venue_ids[quote.venue], quote) for quote in quotes)

    def write(self, quotes: Sequence[Quote]) -> int:
        """Insert `quotes` and return how many. Runs in the caller's transaction, if any.

        Uses binary COPY on PostgreSQL and bulk_create elsewhere (the SQLite quick start). Raises
        UnknownVenue, or Django's DataError when a value does not fit its column (prices and sizes
        are numeric(28, 12): see `check_storable`).
        """
        if not quotes:
            return 0
        rows = self.rows(quotes)
        connection = connections[self.using]
        if connection.vendor == "postgresql":
            copy_rows(connection, rows)
        else:
            QuoteRow.objects.using(self.using).bulk_create(map(quote_model, rows))
        return len(quotes)


def check_storable(quote: Quote) -> None:
    """Raise QuoteRejected("out_of_range") if a field of a valid quote does not fit its column."""
    if len(quote.symbol) > MAX_SYMBOL_LENGTH:
        raise QuoteRejected("out_of_range", f"symbol {quote.symbol!r} is over {MAX_SYMBOL_LENGTH} characters")
    for value in (*quote.bids[0], *quote.asks[0]):
        # Outside this range the column would overflow, or round a positive value to a wrong one.
        if not -DECIMAL_PLACES <= value.adjusted() < MAX_INTEGER_DIGITS:
            raise QuoteRejected(
                "out_of_range", f"{value} does not fit numeric({MAX_DIGITS}, {DECIMAL_PLACES})"
            )
    if quote.seq > MAX_SEQ:
        raise QuoteRejected("out_of_range", f"seq {quote.seq} does not fit in 64 bits")
    for stamp in (quote.received_ts, quote.venue_ts or 0):
        if stamp > MAX_EPOCH_MS:
            raise QuoteRejected("out_of_range", f"timestamp {stamp} ms is past the year 9999")


def read_entry(raw: bytes | str) -> Quote:
    """A queued message as a storable Quote. Raises QuoteRejected with the reason it is not one."""
    quote = pubsub.decode_quote(raw)
    check_storable(quote)
    return quote


def sort_batch(writer: QuoteWriter, batch: Sequence[bytes | str]) -> tuple[list[Quote], list[DeadEntry]]:
    """Split queued messages into storable quotes (in queue order) and dead entries."""
    readable: list[tuple[bytes | str, Quote]] = []
    dead: list[DeadEntry] = []
    for raw in batch:
        try:
            readable.append((raw, read_entry(raw)))
        except QuoteRejected as exc:
            dead.append(DeadEntry(raw, exc.reason, exc.detail))
    unknown = writer.unknown_venues({quote.venue for _, quote in readable})
    dead += [
        DeadEntry(raw, "unknown_venue", quote.venue) for raw, quote in readable if quote.venue in unknown
    ]
    return [quote for _, quote in readable if quote.venue not in unknown], dead


def log_dead(dead: Sequence[DeadEntry]) -> None:
    """One warning per reason, with the count and the first entry's detail."""
    by_reason: dict[str, list[DeadEntry]] = defaultdict(list)
    for entry in dead:
        by_reason[entry.reason].append(entry)
    for reason, entries in by_reason.items():
        log.warning(
            "dead-lettered %d queued quote(s): %s (first: %s)", len(entries), reason, entries[0].detail
        )


def settle_batch(client: redis.Redis, lock: Lock, taken: int, dead: Sequence[DeadEntry]) -> None:
    """Trim `taken` entries off the queue and dead-letter `dead` with per-reason counts, atomically.

    Raises LockNotOwnedError, changing nothing, if the storage lock is no longer this flusher's.
    """
    n = pubsub.names()
    args: list[bytes | str | int] = [lock.local.token, taken]
    for entry in dead:
        args += [entry.reason, entry.raw]
    settle = client.register_script(SETTLE_SCRIPT)
    if not settle(keys=[n.store_lock, n.pending_quotes, n.dead_quotes, n.dead_quote_reasons], args=args):
        raise LockNotOwnedError("the quote storage lock expired before the queue was trimmed")


def drain(client: redis.Redis, lock: Lock, batch: int, deadline: float) -> int:
    """Store queued quotes batch by batch until the queue is empty or `deadline` (monotonic) has
    passed. Returns rows stored. Stops with a warning if the lock is lost."""
    key = pubsub.names().pending_quotes
    writer = QuoteWriter()
    stored = 0
    try:
        while entries := client.lrange(key, 0, batch - 1):
            quotes, dead = sort_batch(writer, entries)
            with transaction.atomic():
                stored += writer.write(quotes)
            log_dead(dead)
            settle_batch(client, lock, len(entries), dead)
            if len(entries) < batch or time.monotonic() >= deadline:
                break
            lock.reacquire()
    except LockNotOwnedError:
        # Another flusher carries on; a batch committed here but not trimmed is stored again.
        log.warning("lost the quote storage lock after storing %d rows; stopping", stored)
    return stored


def store_pending(batch: int = 5000, *, max_seconds: float = 20.0) -> int:
    """Move queued quotes from Redis into the quote table; returns rows stored.

    One flusher at a time across workers: while another holds the lock this returns 0 at once.
    Drains in batches of `batch` until the queue is empty or `max_seconds` have passed (the next
    call carries on). Each batch is committed before it is trimmed off the queue (see the module
    docstring for the trade-off). Entries that cannot be stored (bad JSON, an invalid quote, an
    unknown venue, a value too large for its column) move to `names().dead_quotes`, are counted per
    reason in `names().dead_quote_reasons` and logged; the rest of their batch is stored. While the
    database is away nothing is trimmed: the queue keeps the books (see QUOTE_BUFFER_MAX) and this
    returns 0 with a warning.
    """
    with pubsub.connect() as client:
        lock = client.lock(pubsub.names().store_lock, timeout=STORE_LOCK_SECONDS)
        if not lock.acquire(blocking=False):
            log.info("another flusher is storing quotes; skipping this round")
            return 0
        try:
            return drain(client, lock, batch, time.monotonic() + max_seconds)
        except (OperationalError, InterfaceError) as exc:
            waiting = client.llen(pubsub.names().pending_quotes)
            log.warning(
                "database unavailable, %d book(s) wait in the queue: %s", waiting, str(exc).strip()[:200]
            )
            return 0
        finally:
            release(lock)


def release(lock: Lock) -> None:
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning("the quote storage lock expired before it was released")


def prune_quotes(older_than: datetime, batch: int = 10_000) -> int:
    """Delete quotes received before `older_than`, at most `batch` rows per statement so that no
    single delete holds locks on a large part of the table. Returns rows deleted.

    Outside a transaction each batch commits on its own, so an interrupted prune keeps its progress.
    """
    old = QuoteRow.objects.filter(received_at__lt=older_than)
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:batch]):
        deleted += QuoteRow.objects.filter(pk__in=ids).delete()[0]
    return deleted
