"""The emulator's websocket streams: every change of a venue's served book goes to that venue's
subscribers, framed as the venue frames it, with faults injected on demand.

One aiohttp server, on a port and an event loop (in a thread) of its own, hosts every venue under
its name, `ws://127.0.0.1:PORT/<venue>/<path of the venue's websocket URL>`. A stream dialect
(`binance_ws`, `kraken_ws`) words acknowledgements, snapshots and updates; connections,
subscriptions, fan-out, faults and the record of frames sent live here and know no venue's format.

Changes reach the loop in the order the venue served them (its change listener runs holding the
venue's lock and only queues them). Each connection sends its frames in order from a task of its
own, so a slow client holds up no other. A subscription starts at the version served when it was
made: older changes still queued are not sent to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from aiohttp import WSMsgType, web

from devtools.emulator.venue import Book, ChangeListener, EmulatedVenue, Level, Market

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often the books of subscribed symbols are looked at, so that a feed's moving books (and a
# book a burst passed through) are streamed without anyone asking over REST; Binance's diff stream
# runs at this pace by default (@100ms).
SAMPLE_S = 0.1
# Frames kept per venue in the record of frames sent; the oldest go first.
SENT_FRAMES_KEPT = 1_000_000
# A burst's steps: the best level's amount grows by this much at each one.
BURST_STEP = Decimal("0.00000001")
# How long a call from another thread waits for the loop to carry it out.
CALL_TIMEOUT_S = 30.0
# Books stream_updates sets at most between two turns of the loop (which send their frames), and
# how early it may set a book that it sets at a pace.
BATCH = 100
PACE_SLACK_S = 0.001

Levels = tuple[Level, ...]
ZERO = Decimal(0)


@dataclass(frozen=True)
class Subscription:
    """A symbol's book as one connection asked for it; `depth` is how many levels a side the
    venue keeps the client's book to (None: every level)."""

    symbol: str
    depth: int | None = None


@dataclass(frozen=True)
class Answer:
    """What a client's message asks for and what goes back: `replies` queue behind the frames
    already on their way, `urgent` ones (pongs) go at once, even while the venue stalls."""

    replies: tuple[str, ...] = ()
    urgent: tuple[str, ...] = ()
    subscribe: tuple[Subscription, ...] = ()
    unsubscribe: tuple[str, ...] = ()  # symbols


class StreamDialect(Protocol):
    """The shape of a stream dialect module."""

    def serves(self, path: str) -> bool:
        """Whether `path` (below the venue's root, e.g. "/ws/0") is one of the venue's streams."""
        ...

    def greeting(self) -> tuple[str, ...]:
        """Frames sent as a connection opens."""
        ...

    def answer(self, venue: EmulatedVenue, text: str) -> Answer: ...

    def snapshot(self, market: Market, subscription: Subscription, book: Book, damaged: bool) -> str | None:
        """The frame a new subscription starts with (None: the client asks over REST)."""
        ...

    def update(
        self, market: Market, subscription: Subscription, old: Book | None, new: Book, damaged: bool
    ) -> str | None:
        """The frame of one change (None: nothing the subscription sees changed). `damaged`: the
        frame's checksum is wrong, where the venue sends one."""
        ...


@dataclass(frozen=True, slots=True)
class SentFrame:
    """A book frame (snapshot or update) as it went to one connection: the book's version (Binance
    carries it as the event's final update id `u`), stamped as it was written to the connection,
    on the wall clock (time.time_ns, comparable with other processes' stamps) and the monotonic
    clock."""

    symbol: str
    version: int
    wall_ns: int
    monotonic_ns: int


@dataclass(frozen=True)
class StreamFault:
    """Trouble for a venue's streams, each once: `skip_ids` update ids pass without a frame (the
    next frame of each book tells of ids never seen), the next book frame carries a wrong
    `bad_checksum`, no frame goes out for `stall_s` seconds (they wait, connections stay open and
    pongs still go), `burst` changes of each subscribed book go back to back, then (`drop`) every
    stream connection of the venue is cut."""

    drop: bool = False
    skip_ids: int = 0
    bad_checksum: bool = False
    stall_s: float = 0.0
    burst: int = 0


@dataclass(frozen=True, slots=True)
class _Frame:
    text: str
    symbol: str | None = None  # book frames only: recorded as sent
    version: int = 0


@dataclass
class _Subscribed:
    subscription: Subscription
    since: int  # the version its book had when it was made


class _Connection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.subscribed: dict[str, _Subscribed] = {}
        self.outbox: asyncio.Queue[_Frame] = asyncio.Queue()
        self.sender: asyncio.Task[None] | None = None

    def cut(self) -> None:
        """End the connection at once, with no closing handshake, as a dropped network does."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class _VenueStreams:
    """One venue's connections, the changes waiting to go out, and its faults."""

    def __init__(self, name: str, venue: EmulatedVenue, dialect: StreamDialect) -> None:
        self.name = name
        self.venue = venue
        self.dialect = dialect
        self.connections: set[_Connection] = set()
        self.changes: deque[tuple[str, Book | None, Book]] = deque()
        self.drain_scheduled = False
        self.stalled_until = 0.0  # monotonic seconds
        self.stall_ended = asyncio.Event()
        self.damage_next = False
        self.sent: deque[SentFrame] = deque(maxlen=SENT_FRAMES_KEPT)

    def subscribed_symbols(self) -> set[str]:
        return {symbol for connection in self.connections for symbol in connection.subscribed}

    def clear_fault(self) -> None:
        self.damage_next = False
        self.stalled_until = 0.0
        self.stall_ended.set()

    def forget(self) -> None:
        self.sent.clear()
        self.clear_fault()


class StreamServer:
    """The websocket server of every venue that has a stream dialect. start() and stop() from any
    thread but the server's own; every other method too, and each returns once the loop has
    carried it out."""

    def __init__(
        self, venues: Mapping[str, tuple[EmulatedVenue, StreamDialect]], host: str, port: int
    ) -> None:
        self.host = host
        self.port = port
        self._venues = {
            name: _VenueStreams(name, venue, dialect) for name, (venue, dialect) in venues.items()
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        for streams in self._venues.values():
            streams.changes.clear()  # of a run before: their connections are gone
            streams.drain_scheduled = False
        sock = socket.create_server((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator-streams", daemon=True)
        self._thread.start()
        self._call(self._open(sock))
        for streams in self._venues.values():
            streams.venue.on_change(self._listener(streams))

    def stop(self) -> None:
        """Cut every connection and stop serving; the thread and the loop end."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for streams in self._venues.values():
            streams.venue.on_change(None)
        try:
            self._call(self._close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    @property
    def venues(self) -> tuple[str, ...]:
        return tuple(self._venues)

    def url_for(self, venue: str) -> str:
        return f"ws://{self.host}:{self.port}/{self._of(venue).name}"

    def inject(self, venue: str, fault: StreamFault) -> None:
        """Carry out `fault` on `venue`'s streams (see StreamFault)."""
        streams = self._of(venue)
        if fault.skip_ids:
            streams.venue.skip_versions(fault.skip_ids)
        self._call(self._inject(streams, fault))

    def clear_fault(self, venue: str) -> None:
        """End a stall and take back a bad checksum not yet sent."""
        self._call(self._clear_fault(self._of(venue)))

    def apply(
        self, venue: str, symbol: str, books: Sequence[tuple[Levels, Levels]], per_second: float | None
    ) -> None:
        """Set `symbol`'s book to each of `books` in turn, `per_second` of them a second (None: as
        fast as they go); returns once the last is set (its frames may still be on their way)."""
        self._call(self._apply(self._of(venue).venue, symbol, books, per_second), timeout=None)

    def sent_frames(self, venue: str) -> list[SentFrame]:
        return self._call(self._sent(self._of(venue)))

    def connections(self, venue: str) -> int:
        return self._call(self._count(self._of(venue)))

    def clear(self) -> None:
        """Forget every venue's frames sent and faults."""
        if self._loop is None:
            for streams in self._venues.values():
                streams.forget()
            return
        self._call(self._forget())

    def _of(self, venue: str) -> _VenueStreams:
        try:
            return self._venues[venue]
        except KeyError:
            streamed = sorted(self._venues)
            raise KeyError(f"the emulator streams no venue {venue!r}; it streams {streamed}") from None

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = CALL_TIMEOUT_S) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the emulator's streams are not running: start the emulator first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # The rest runs on the server's loop.

    async def _open(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/{venue}/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _close(self) -> None:
        for streams in self._venues.values():
            for connection in list(streams.connections):
                connection.cut()
        if self._runner is not None:
            await self._runner.cleanup()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        streams = self._venues.get(request.match_info["venue"])
        path = "/" + request.match_info["path"]
        if streams is None or not streams.dialect.serves(path):
            raise web.HTTPNotFound(text=f"no stream at {request.path}")
        ws = web.WebSocketResponse(compress=False)  # venues' books go uncompressed, and faster
        await ws.prepare(request)
        connection = _Connection(request, ws)
        streams.connections.add(connection)
        connection.sender = asyncio.get_running_loop().create_task(self._send(streams, connection))
        for text in streams.dialect.greeting():
            connection.outbox.put_nowait(_Frame(text))
        log.debug("%s stream %s opened by %s", streams.name, path, request.remote)
        try:
            await self._read(streams, connection)
        finally:
            streams.connections.discard(connection)
            connection.sender.cancel()
            log.debug("%s stream %s closed", streams.name, path)
        return ws

    async def _read(self, streams: _VenueStreams, connection: _Connection) -> None:
        with contextlib.suppress(ConnectionError):
            async for message in connection.ws:
                if message.type is WSMsgType.TEXT:
                    await self._answer(
                        streams, connection, streams.dialect.answer(streams.venue, message.data)
                    )

    async def _answer(self, streams: _VenueStreams, connection: _Connection, answer: Answer) -> None:
        for text in answer.urgent:
            await connection.ws.send_str(text)
        for text in answer.replies:
            connection.outbox.put_nowait(_Frame(text))
        for symbol in answer.unsubscribe:
            connection.subscribed.pop(symbol, None)
        for subscription in answer.subscribe:
            self._subscribe(streams, connection, subscription)

    def _subscribe(self, streams: _VenueStreams, connection: _Connection, subscription: Subscription) -> None:
        """Start (or start again) the subscription at the book served now, with the dialect's
        snapshot of it."""
        book = streams.venue.book(subscription.symbol)
        connection.subscribed[subscription.symbol] = _Subscribed(subscription, book.version)
        market = streams.venue.markets[subscription.symbol]
        text = streams.dialect.snapshot(market, subscription, book, streams.damage_next)
        if text is not None:
            streams.damage_next = False
            connection.outbox.put_nowait(_Frame(text, subscription.symbol, book.version))

    async def _send(self, streams: _VenueStreams, connection: _Connection) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                frame = await connection.outbox.get()
                await self._stall_over(streams)
                wall_ns, monotonic_ns = time.time_ns(), time.monotonic_ns()
                await connection.ws.send_str(frame.text)
                if frame.symbol is not None:
                    streams.sent.append(SentFrame(frame.symbol, frame.version, wall_ns, monotonic_ns))

    async def _stall_over(self, streams: _VenueStreams) -> None:
        while (left := streams.stalled_until - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(streams.stall_ended.wait(), left)

    def _listener(self, streams: _VenueStreams) -> ChangeListener:
        loop = self._loop
        assert loop is not None

        def changed(symbol: str, old: Book | None, new: Book) -> None:
            streams.changes.append((symbol, old, new))
            if not streams.drain_scheduled:
                streams.drain_scheduled = True
                loop.call_soon_threadsafe(self._drain, streams)

        return changed

    def _drain(self, streams: _VenueStreams) -> None:
        streams.drain_scheduled = False
        while streams.changes:
            self._fan_out(streams, *streams.changes.popleft())

    def _fan_out(self, streams: _VenueStreams, symbol: str, old: Book | None, new: Book) -> None:
        """One change to every connection subscribed to its symbol since before it, framed once
        for each kind of subscription."""
        market = streams.venue.markets[symbol]
        framed: dict[Subscription, str | None] = {}
        for connection in streams.connections:
            subscribed = connection.subscribed.get(symbol)
            if subscribed is None or new.version <= subscribed.since:
                continue
            subscription = subscribed.subscription
            if subscription not in framed:
                framed[subscription] = streams.dialect.update(
                    market, subscription, old, new, streams.damage_next
                )
            text = framed[subscription]
            if text is not None:
                connection.outbox.put_nowait(_Frame(text, symbol, new.version))
        if any(text is not None for text in framed.values()):
            streams.damage_next = False

    async def _sample(self) -> None:
        """Look at every subscribed book now and then: a change found is served and streamed."""
        while True:
            await asyncio.sleep(SAMPLE_S)
            for streams in self._venues.values():
                for symbol in streams.subscribed_symbols():
                    self._look_at(streams, symbol)

    def _look_at(self, streams: _VenueStreams, symbol: str) -> None:
        try:
            streams.venue.book(symbol)
        except Exception:  # a test's feed that fails: its next look may pass, and others go on
            log.exception("%s: the %s book could not be served", streams.name, symbol)

    async def _inject(self, streams: _VenueStreams, fault: StreamFault) -> None:
        streams.damage_next = streams.damage_next or fault.bad_checksum
        if fault.stall_s > 0:
            streams.stalled_until = time.monotonic() + fault.stall_s
            streams.stall_ended = asyncio.Event()
        if fault.burst > 0:
            for symbol in streams.subscribed_symbols():
                await self._burst(streams.venue, symbol, fault.burst)
        if fault.drop:
            for connection in list(streams.connections):
                connection.cut()

    async def _burst(self, venue: EmulatedVenue, symbol: str, count: int) -> None:
        book = venue.book(symbol)
        for bids, asks in stepped_books(book, count):
            venue.pass_book(symbol, bids, asks)
        venue.book(symbol)  # back to the book it stepped away from

    async def _clear_fault(self, streams: _VenueStreams) -> None:
        streams.clear_fault()

    async def _apply(
        self,
        venue: EmulatedVenue,
        symbol: str,
        books: Sequence[tuple[Levels, Levels]],
        per_second: float | None,
    ) -> None:
        start = time.monotonic()
        for index, (bids, asks) in enumerate(books):
            if per_second:
                await _until(start + index / per_second)
            if index % BATCH == BATCH - 1:
                await asyncio.sleep(0)  # let the frames go out meanwhile, even when behind
            venue.set_book(symbol, bids, asks)

    async def _sent(self, streams: _VenueStreams) -> list[SentFrame]:
        return list(streams.sent)

    async def _count(self, streams: _VenueStreams) -> int:
        return len(streams.connections)

    async def _forget(self) -> None:
        for streams in self._venues.values():
            streams.forget()


async def _until(moment: float) -> None:
    """Sleep until shortly before `moment`: the loop's sleeps are whole milliseconds, so a sleep
    for less would make a fast pace a slow one."""
    left = moment - time.monotonic()
    if left > PACE_SLACK_S:
        await asyncio.sleep(left - PACE_SLACK_S)


def stepped_books(book: Book, count: int) -> list[tuple[Levels, Levels]]:
    """`count` books that differ from `book`, and each from the one before, only in the amount of
    the best bid (the best ask when there are no bids), which grows by BURST_STEP at each; none
    for a book without levels."""
    if not book.bids and not book.asks:
        return []
    side = book.bids or book.asks
    (price, amount), rest = side[0], side[1:]
    steps = [((price, amount + BURST_STEP * step), *rest) for step in range(1, count + 1)]
    return [(levels, book.asks) if book.bids else (book.bids, levels) for levels in steps]


def changed_levels(before: Sequence[Level], after: Sequence[Level]) -> list[Level]:
    """The levels to send so that a client holding `before` holds `after`: each price gone with
    amount zero, then each new or changed level, best first."""
    if before == after:
        return []
    old, new = dict(before), dict(after)
    gone = [(price, ZERO) for price in old if price not in new]
    return gone + [(price, amount) for price, amount in new.items() if old.get(price) != amount]
