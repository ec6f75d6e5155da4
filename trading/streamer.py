"""The streamer's steps (`manage.py stream_prices`): venues' order books through ccxt.pro's
websockets, each change published as a polled book is, on the same channels and latest-book keys,
numbered on the same per-venue sequence.

One asyncio process serves the enabled ccxt venues fed by `stream` or `both` (or those of them it
is told to, so that several processes can split the venues). Each venue's stream runs in sessions:
a session opens a fresh ccxt.pro client, which subscribes and builds each book from a snapshot,
and lasts until a fault: a gap in the venue's update ids or a checksum that does not match (ccxt's
errors), a connection lost, no frame within the venue's stall limit, or a book that crosses. A
fault withdraws the venue's books at once (trading.pubsub.withdraw_books: listeners drop them and
the trade re-check no longer finds them), is counted for the venue (trading.streams), and the next
session starts from a fresh snapshot, with nothing of the old books kept. Each venue's state is in
its stream heartbeat, which the collector reads: while a venue's stream is not live, it is polled.

Each step is a method a test can call alone; `Streamer.run` wires them to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol

import redis
from django.conf import settings
from django.db import Error as DatabaseError
from django.db import close_old_connections, connections

from trading import collector, pubsub, streams
from trading.clock import now_ms
from trading.core import streams as rules
from trading.core.streams import Feed, StreamEvent, StreamState
from trading.core.types import Quote, StaleMark
from trading.models import Venue
from trading.observability import heartbeats
from trading.venues.base import StreamFault, VenueError
from trading.venues.ccxt_stream import CcxtStream

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
PLAN_REFRESH_SECONDS = 5.0
PROCESS_HEARTBEAT_TTL_SECONDS = 10


@dataclass(frozen=True)
class StreamSpec:
    """What one venue's stream needs; a venue whose spec changes is streamed anew."""

    name: str
    ccxt_id: str
    api_url: str
    stream_url: str
    stall_ms: int
    symbols: tuple[str, ...]


def stream_specs(
    plan: collector.CollectionPlan, only: Collection[str] | None = None
) -> dict[str, StreamSpec]:
    """The plan's venues to stream, by name: the ccxt venues fed by stream or both (of those named
    in `only`, when given), on the plan's symbols."""
    specs: dict[str, StreamSpec] = {}
    if not plan.symbols:
        return specs
    for fields in plan.venues.values():
        if fields.get("kind") != Venue.Kind.CCXT or (fields.get("feed") or Feed.POLL) == Feed.POLL:
            continue
        if only is not None and fields["name"] not in only:
            continue
        specs[fields["name"]] = StreamSpec(
            name=fields["name"],
            ccxt_id=fields["ccxt_id"],
            api_url=fields.get("api_url") or "",
            stream_url=fields.get("stream_url") or "",
            stall_ms=fields.get("stream_stall_ms") or settings.STREAM_STALL_MS,
            symbols=tuple(plan.symbols),
        )
    return specs


class Session(Protocol):
    """One session of a venue's stream (trading.venues.ccxt_stream.CcxtStream)."""

    last_frame_ms: int

    async def listed(self, symbols: list[str]) -> list[str]: ...

    async def next_book(self, symbol: str) -> Quote: ...

    async def close(self) -> None: ...


def open_session(spec: StreamSpec) -> Session:
    return CcxtStream(
        spec.name,
        spec.ccxt_id,
        api_url=spec.api_url,
        stream_url=spec.stream_url,
        depth=collector.BOOK_DEPTH,
    )


class VenueStream:
    """One venue's stream, kept going session after session, and its state."""

    def __init__(
        self,
        spec: StreamSpec,
        client: redis.Redis,
        streamer: str,
        peers: Sequence[str] = (),
        opener: Callable[[StreamSpec], Session] = open_session,
    ) -> None:
        self.spec = spec
        self.client = client
        self.streamer = streamer
        self.peers = tuple(peers) or (spec.name,)  # the venues whose books make the price band
        self.opener = opener
        self.row = Venue(name=spec.name)  # what the collector's band and rejection counts name
        self.state = StreamState.SYNCING
        self.since_ms = now_ms()
        self.reason = ""
        self.published = 0
        self.last_book_ms: int | None = None
        self.faults_in_a_row = 0
        self.fresh: set[str] = set()  # symbols with a book in this session
        self.last_stamp: dict[str, int] = {}  # the moment of each symbol's book published last

    # --- state ----------------------------------------------------------------------------------

    def beat_body(self) -> dict[str, Any]:
        return {
            "venue": self.spec.name,
            "streamer": self.streamer,
            "pid": os.getpid(),
            "at_ms": now_ms(),
            "state": self.state.value,
            "since_ms": self.since_ms,
            "reason": self.reason,
            "published": self.published,
            "last_book_ms": self.last_book_ms,
            "faults_in_a_row": self.faults_in_a_row,
        }

    def heartbeat(self) -> None:
        """Write the venue's stream heartbeat; Redis trouble is logged and left to the next beat."""
        try:
            streams.write_beat(self.client, self.spec.name, self.beat_body())
        except redis.RedisError as exc:
            log.warning("%s: stream heartbeat not written: %s", self.spec.name, exc)

    def enter(self, state: StreamState, reason: str = "") -> None:
        """Change state, and say so in the heartbeat at once: the collector reads it."""
        if state is StreamState.LIVE:
            self.faults_in_a_row = 0
        self.state, self.since_ms, self.reason = state, now_ms(), reason
        self.heartbeat()
        log.info("%s: stream %s%s", self.spec.name, state.value, f" ({reason})" if reason else "")

    # --- the steps of one book and one fault ----------------------------------------------------

    def on_book(self, quote: Quote) -> int:
        """Band-check, number and publish one streamed book, as the collector does a polled one;
        the venue is live once every symbol has had its book this session. Returns how many were
        published (0 or 1)."""
        now = now_ms()
        quote = replace(quote, venue_ts=rules.venue_stamp(quote.venue_ts, self.last_stamp.get(quote.symbol)))
        kept, off_band = collector.within_band(self.client, self.row, self.peers, [quote], now)
        collector.record_rejections(self.client, self.row, off_band)
        published = pubsub.publish_quotes(self.client, collector.number_quotes(self.client, kept))
        if published:
            self.last_stamp[quote.symbol] = quote.timestamp
            self.published += published
            self.last_book_ms = now
        self.fresh.add(quote.symbol)
        if self.state is StreamState.SYNCING and self.fresh.issuperset(self.spec.symbols):
            self.enter(StreamState.LIVE)
        return published

    def mark_stale(self, fault: StreamFault) -> None:
        """Withdraw every book of the venue at once, count the fault, and say the stream is stale
        until its next session is live."""
        now = now_ms()
        log.warning("%s: stream fault, books withdrawn: %s", self.spec.name, fault)
        self.faults_in_a_row += 1
        self.fresh.clear()
        self.last_stamp.clear()
        try:
            marks = [StaleMark(self.spec.name, symbol, fault.kind, now) for symbol in self.spec.symbols]
            pubsub.withdraw_books(self.client, marks)
            streams.record_event(self.client, self.spec.name, fault.kind, now)
        except redis.RedisError as exc:
            log.error("%s: books could not be withdrawn: %s", self.spec.name, exc)
        self.enter(StreamState.STALE, str(fault)[:200])

    # --- sessions -------------------------------------------------------------------------------

    async def follow(self, session: Session, symbol: str) -> NoReturn:
        """Publish every change of `symbol`'s book until the session breaks (StreamFault)."""
        while True:
            self.on_book(await session.next_book(symbol))

    async def watch_stall(self, session: Session) -> NoReturn:
        """Raise StreamFault(stall) once the session has had no frame for the venue's limit."""
        limit = self.spec.stall_ms
        while True:
            await asyncio.sleep(min(limit / 4, 1000) / 1000)
            now = now_ms()
            if rules.stalled(session.last_frame_ms, now, limit):
                silent = f"no frame for {now - session.last_frame_ms} ms (limit {limit})"
                raise StreamFault(StreamEvent.STALL, f"{self.spec.name}: {silent}")

    async def run_session(self, session: Session) -> StreamFault:
        """Stream the venue's symbols on `session` until the first fault, which it returns, every
        watch of the session stopped."""
        self.enter(StreamState.SYNCING)
        try:
            listed = await session.listed(list(self.spec.symbols))
        except StreamFault as fault:
            return fault
        for symbol in sorted(set(self.spec.symbols) - set(listed)):
            log.warning("%s lists no %s: not streamed", self.spec.name, symbol)
        if not listed:
            wanted = ", ".join(self.spec.symbols)
            return StreamFault(StreamEvent.ERROR, f"{self.spec.name} lists none of {wanted}")
        self.fresh |= set(self.spec.symbols) - set(listed)  # nothing to wait for
        tasks = [asyncio.create_task(self.follow(session, symbol)) for symbol in listed]
        tasks.append(asyncio.create_task(self.watch_stall(session)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return first_fault(self.spec.name, done)

    async def session_once(self) -> None:
        """One session: opened, streamed until its fault, the fault marked, closed. A client that
        cannot be opened is a fault of its own (an exchange ccxt.pro does not know, say)."""
        try:
            session = self.opener(self.spec)
        except VenueError as exc:
            self.mark_stale(StreamFault(StreamEvent.ERROR, str(exc)))
            return
        try:
            self.mark_stale(await self.run_session(session))
        finally:
            await session.close()

    async def run(self) -> NoReturn:
        """Sessions one after another, the resync after faults in a row backing off."""
        while True:
            await self.session_once()
            cap = settings.STREAM_MAX_BACKOFF_SECONDS
            await asyncio.sleep(rules.resync_delay_s(self.faults_in_a_row, cap))


def first_fault(venue: str, done: Collection[asyncio.Task[Any]]) -> StreamFault:
    """The fault that ended a session's watches: a StreamFault as raised, anything else (a fault
    of ours, or Redis refusing) logged and named an error."""
    for task in done:
        error = task.exception()
        if isinstance(error, StreamFault):
            return error
    error = next(task.exception() for task in done)
    log.error("%s: a stream step failed", venue, exc_info=error)
    return StreamFault(StreamEvent.ERROR, f"{venue}: {type(error).__name__}: {error}"[:300])


class Streamer:
    """The venues' streams of one process: started, restarted when their venue changes, stopped
    when it no longer streams, and the heartbeats. `venues` limits it to those venues."""

    def __init__(
        self,
        client: redis.Redis,
        venues: Collection[str] | None = None,
        name: str = "",
        opener: Callable[[StreamSpec], Session] = open_session,
    ) -> None:
        self.client = client
        self.only = frozenset(venues) if venues else None
        self.name = name or f"streamer-{os.getpid()}"
        self.opener = opener
        self.streams: dict[str, VenueStream] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.peers: tuple[str, ...] = ()
        # The ORM may not run on the event loop's thread: plans are read on a thread of their own.
        self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamer-db")

    def read_specs(self) -> dict[str, StreamSpec]:
        """The venues to stream, from the collection plan (the one last kept while the database is
        away). Keeps the band's peers. Raises Django's database errors when no plan is kept."""
        close_old_connections()
        plan = collector.collection_plan(self.client)
        self.peers = tuple(fields["name"] for fields in plan.venues.values())
        return stream_specs(plan, self.only)

    async def refresh(self) -> None:
        """Bring the running streams in line with the plan; a plan that cannot be read leaves them."""
        loop = asyncio.get_running_loop()
        try:
            specs = await loop.run_in_executor(self._database, self.read_specs)
        except (DatabaseError, redis.RedisError) as exc:
            log.warning("streams left as they are, the plan is unreadable: %s", exc)
            return
        await self.reconcile(specs)

    async def reconcile(self, specs: dict[str, StreamSpec]) -> None:
        """Stop the streams no longer wanted or changed, and start the new ones."""
        for name in [name for name, stream in self.streams.items() if specs.get(name) != stream.spec]:
            await self.stop_stream(name)
        for name, spec in specs.items():
            if name not in self.streams:
                self.start_stream(spec)
        for stream in self.streams.values():
            stream.peers = self.peers or stream.peers

    def start_stream(self, spec: StreamSpec) -> VenueStream:
        stream = VenueStream(spec, self.client, self.name, self.peers, self.opener)
        self.streams[spec.name] = stream
        self.tasks[spec.name] = asyncio.create_task(stream.run(), name=f"stream {spec.name}")
        log.info("%s: streaming %s", spec.name, ", ".join(spec.symbols) or "nothing")
        return stream

    async def stop_stream(self, name: str) -> None:
        """Stop one venue's stream (its session closed) and remove its heartbeat: the venue is
        polled from its next round."""
        task = self.tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.streams.pop(name)
        try:
            streams.remove_beat(self.client, name)
        except redis.RedisError as exc:
            log.warning("%s: stream heartbeat left to expire: %s", name, exc)
        log.info("%s: stream stopped", name)

    def heartbeat(self) -> None:
        """The process's heartbeat, and each venue's stream heartbeat."""
        body = {"name": self.name, "pid": os.getpid(), "at_ms": now_ms(), "venues": sorted(self.streams)}
        try:
            heartbeats.write(self.client, f"streamer:{self.name}", body, PROCESS_HEARTBEAT_TTL_SECONDS)
        except redis.RedisError as exc:
            log.warning("streamer heartbeat not written: %s", exc)
        for stream in self.streams.values():
            stream.heartbeat()

    async def run(self, stopping: asyncio.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Stream until `stopping` is set; then stop every stream and remove the heartbeats."""
        await self.refresh()
        self.heartbeat()
        on_ready()
        next_refresh = asyncio.get_running_loop().time() + PLAN_REFRESH_SECONDS
        try:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), HEARTBEAT_SECONDS)
                if asyncio.get_running_loop().time() >= next_refresh:
                    await self.refresh()
                    next_refresh = asyncio.get_running_loop().time() + PLAN_REFRESH_SECONDS
                self.heartbeat()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop every stream (their clients closed), then sign off."""
        for name in list(self.streams):
            await self.stop_stream(name)
        try:
            heartbeats.remove(self.client, f"streamer:{self.name}")
        except redis.RedisError as exc:
            log.warning("streamer heartbeat left to expire: %s", exc)
        await asyncio.get_running_loop().run_in_executor(self._database, connections.close_all)
        self._database.shutdown(wait=False)
