"""What has been taken from each venue's book snapshot, kept in Redis where the listener, every
worker and the paper gateway see it (the rules are trading.core.liquidity's).

One hash per snapshot, `<prefix>claims:<venue>:<symbol>:<seq>`, with a field per claimant, kind
(r: reserved for an order about to be sent, f: filled by one), book side and price, holding the
amount as a decimal string. A snapshot's hash expires on its own: a newer book replaces the
snapshot, and the venue's own book then shows what our orders took. Writers change a hash only in
a WATCH/MULTI transaction against what they read, so two of them never promise one level twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import TypeVar

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from trading.core.liquidity import BookSide, Claim
from trading.core.types import Quote
from trading.pubsub import names

KEEP_SECONDS = 120
T = TypeVar("T")
Claims = dict[str, Claim]  # claimant -> what it holds of one snapshot


def key(book: Quote) -> str:
    return f"{names().prefix}claims:{book.venue}:{book.symbol}:{book.seq}"


def _field(claimant: str, kind: str, side: BookSide, price: Decimal) -> str:
    return f"{claimant}|{kind}|{side.value}|{price.normalize():f}"


def parse(raw: Mapping[bytes, bytes]) -> Claims:
    """A snapshot's hash as claims by claimant; malformed fields are skipped."""
    claims: Claims = {}
    for name, value in raw.items():
        try:
            claimant, kind, side, price = name.decode().split("|")
            entry = (BookSide(side), Decimal(price))
            amount = Decimal(value.decode())
        except (ValueError, UnicodeDecodeError, InvalidOperation):
            continue
        claim = claims.setdefault(claimant, Claim())
        (claim.reserved if kind == "r" else claim.filled)[entry] = amount
    return claims


def read(client: redis.Redis | Pipeline, books: Sequence[Quote]) -> list[Claims]:
    """The claims on each of `books`' snapshots, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for book in books:
        pipe.hgetall(key(book))
    return [parse(raw) for raw in pipe.execute()]


def transact(
    client: redis.Redis,
    books: Sequence[Quote],
    work: Callable[[Pipeline, list[Claims]], T],
    also_watch: Sequence[str] = (),
) -> T:
    """Run `work(pipe, claims)` on the current claims of `books`' snapshots, then commit the writes
    it queued on `pipe` (after calling pipe.multi()) only if no other writer changed those
    snapshots (or the keys in `also_watch`) meanwhile; otherwise read again and rerun it. Returns
    what `work` returned."""
    outcome: list[T] = []

    def attempt(pipe: Pipeline) -> None:
        # Read in one round trip on another connection: the watch, set before, covers it all the same.
        outcome.clear()
        outcome.append(work(pipe, read(client, books)))

    client.transaction(attempt, *(key(book) for book in books), *also_watch)
    return outcome[0]


def set_claim(pipe: Pipeline, book: Quote, claimant: str, old: Claim | None, new: Claim) -> None:
    """Queue the writes that make `claimant`'s claim on `book` exactly `new` (it was `old`)."""
    name = key(book)
    stale = [
        _field(claimant, kind, side, price)
        for kind, part in (("r", old.reserved if old else {}), ("f", old.filled if old else {}))
        for side, price in part
    ]
    if stale:
        pipe.hdel(name, *stale)
    fields: dict[FieldT, EncodableT] = {
        _field(claimant, kind, side, price): f"{amount.normalize():f}"
        for kind, part in (("r", new.reserved), ("f", new.filled))
        for (side, price), amount in part.items()
        if amount > 0
    }
    if fields:
        pipe.hset(name, mapping=fields)
        pipe.expire(name, KEEP_SECONDS)
