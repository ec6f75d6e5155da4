"""Streamed books through the real ccxt.pro client against the emulator's Binance and Kraken
streams, with real Redis: books reach Pub/Sub numbered and stamped; each stream fault the emulator
injects (skipped update ids, a bad checksum, a stall, a dropped connection) and a book that
crosses withdraws the venue's book, is counted, and resyncs to the venue's book as it is, with no
level of the broken one left; a burst is taken in stride."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from redis.client import PubSub

from devtools.emulator import Emulator, emulate
from tests.conftest import ROOT, make_strategy, make_venue
from tests.deadlines import Deadline, scaled, wait_until
from trading import pubsub, streams
from trading.clock import now_ms
from trading.core.streams import StreamState
from trading.core.types import Level, Quote, StaleMark
from trading.models import Venue
from trading.streamer import StreamSpec, VenueStream

SYMBOL = "BTC/USDT"
GHOST = ("63990", "7")  # a level of the book before the fault, gone from the venue's book after it
BEFORE = ([("64000", "1"), GHOST, ("63980", "2")], [("64010", "1"), ("64020", "2")])
AFTER = ([("64000", "1.5"), ("63980", "2")], [("64010", "1"), ("64020", "2")])
# Long enough that a quiet emulator book (no frames while it does not change) never stalls a test
# that is not about stalls; those set their own.
QUIET_STALL_MS = 60_000


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate("binance", "kraken") as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    for venue in ("binance", "kraken"):
        running_emulator.set_book(venue, SYMBOL, *BEFORE)
    yield running_emulator
    running_emulator.reset()


@pytest.fixture
def prices(redis_client: redis.Redis, names: pubsub.Names) -> Iterator[PubSub]:
    channel = redis_client.pubsub()
    channel.subscribe(names.prices(SYMBOL))
    deadline = Deadline(5)
    while (confirmed := channel.get_message(timeout=1)) is None and not deadline.passed():
        pass
    assert confirmed is not None
    yield channel
    channel.close()


class Running:
    """A venue's stream run on an event loop of its own thread, as the streamer runs it."""

    def __init__(self, stream: VenueStream) -> None:
        self.stream = stream
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[Any] | None = None
        self.thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.stream.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def __enter__(self) -> VenueStream:
        self.thread.start()
        return self.stream

    def __exit__(self, *exc: object) -> None:
        wait_until(lambda: self.task is not None, what="the stream's task")
        self.loop.call_soon_threadsafe(self.task.cancel)  # type: ignore[union-attr]
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the stream did not stop"


def streaming(emulator: Emulator, client: redis.Redis, venue: str, stall_ms: int = QUIET_STALL_MS) -> Running:
    spec = StreamSpec(
        name=venue,
        ccxt_id=venue,
        api_url=emulator.url_for(venue),
        stream_url=emulator.stream_url_for(venue),
        stall_ms=stall_ms,
        symbols=(SYMBOL,),
    )
    return Running(VenueStream(spec, client, "test-streamer"))


def levels(raw: list[tuple[str, str]]) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(amount)) for price, amount in raw)


def kept_book(client: redis.Redis, venue: str) -> tuple[tuple[Level, ...], tuple[Level, ...]] | None:
    book = pubsub.latest_book(client, SYMBOL, venue)
    return None if book is None else (book.bids, book.asks)


def live_with(stream: VenueStream, client: redis.Redis, book: tuple[list[Any], list[Any]]) -> None:
    """Wait until the stream is live and the venue's kept book is exactly `book`."""
    expected = (levels(book[0]), levels(book[1]))
    wait_until(
        lambda: stream.state is StreamState.LIVE and kept_book(client, stream.spec.name) == expected,
        timeout=60,
        what=f"{stream.spec.name} live with {expected}",
    )


def received(channel: PubSub) -> list[Quote | StaleMark]:
    found = []
    while (message := channel.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            found.append(pubsub.decode_price_event(message["data"]))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_streamed_books_reach_pubsub_numbered_with_the_venues_stamp_and_ours(
    venue: str, emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    moves = [([(f"{64000 + step}", "1")], [(f"{64010 + step}", "1")]) for step in range(1, 6)]
    with streaming(emulator, redis_client, venue) as stream:
        live_with(stream, redis_client, BEFORE)
        emulator.stream_updates(venue, SYMBOL, moves)
        live_with(stream, redis_client, moves[-1])

    books = [event for event in received(prices) if isinstance(event, Quote)]
    assert [book.seq for book in books] == list(range(1, len(books) + 1))
    assert (books[-1].bids, books[-1].asks) == (levels(moves[-1][0]), levels(moves[-1][1]))
    updates = books[1:]  # after the snapshot, every book is stamped by the venue too
    assert updates
    assert all(book.venue_ts is not None for book in updates)
    assert all(abs(book.received_ts - book.timestamp) < 5_000 for book in updates)
    assert streams.event_counts(redis_client, [venue]) == {venue: {}}


def fault_then_resync(
    emulator: Emulator,
    client: redis.Redis,
    channel: PubSub,
    venue: str,
    inject: dict[str, Any],
    kind: str,
    *,
    stall_ms: int = QUIET_STALL_MS,
) -> VenueStream:
    """Stream `venue` live on BEFORE; inject the fault, the venue's book moving on to AFTER (which
    drops the GHOST level); wait for the fault to be counted and the stream live again on AFTER.
    Returns the stream."""
    with streaming(emulator, client, venue, stall_ms) as stream:
        live_with(stream, client, BEFORE)
        emulator.set_stream_fault(venue, **inject)
        emulator.stream_updates(venue, SYMBOL, [AFTER])
        wait_until(lambda: streams.event_counts(client, [venue])[venue].get(kind), timeout=60, what=kind)
        emulator.clear_stream_fault(venue)
        live_with(stream, client, AFTER)
    events = received(channel)
    marks = [event for event in events if isinstance(event, StaleMark)]
    assert marks, "no stale mark was published"
    assert {(mark.venue, mark.symbol) for mark in marks} == {(venue, SYMBOL)}
    assert kind in {mark.kind for mark in marks}
    after_mark = events[events.index(marks[0]) + 1 :]
    ghost = (Decimal(GHOST[0]), Decimal(GHOST[1]))
    assert not any(ghost in event.bids for event in after_mark if isinstance(event, Quote)), "a ghost level"
    return stream


@pytest.mark.slow
def test_skipped_update_ids_are_a_gap_that_resyncs_without_the_ghost_level(
    emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    fault_then_resync(emulator, redis_client, prices, "binance", {"skip_ids": 1}, "gap")


@pytest.mark.slow
def test_a_bad_checksum_resyncs_without_the_ghost_level(
    emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    fault_then_resync(emulator, redis_client, prices, "kraken", {"bad_checksum": True}, "checksum")


@pytest.mark.slow
@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_a_dropped_connection_resyncs_without_the_ghost_level(
    venue: str, emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    fault_then_resync(emulator, redis_client, prices, venue, {"drop": True}, "disconnect")


@pytest.mark.slow
@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_a_stall_past_the_venues_limit_resyncs_without_the_ghost_level(
    venue: str, emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    fault_then_resync(emulator, redis_client, prices, venue, {"stall_s": 30.0}, "stall", stall_ms=1_500)


@pytest.mark.slow
@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_a_burst_is_followed_to_the_book_it_ends_on_without_a_fault(
    venue: str, emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    with streaming(emulator, redis_client, venue) as stream:
        live_with(stream, redis_client, BEFORE)
        emulator.set_stream_fault(venue, burst=500)
        emulator.stream_updates(venue, SYMBOL, [AFTER])
        live_with(stream, redis_client, AFTER)

    books = [event for event in received(prices) if isinstance(event, Quote)]
    assert [book.seq for book in books] == list(range(1, len(books) + 1))
    assert streams.event_counts(redis_client, [venue]) == {venue: {}}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stream_prices_streams_the_emulators_venues_and_closes_its_clients_on_sigterm(
    emulator: Emulator, redis_client: redis.Redis, spawn
) -> None:
    make_strategy(symbols=[SYMBOL])
    for venue in ("binance", "kraken"):
        make_venue(
            venue,
            kind=Venue.Kind.CCXT,
            ccxt_id=venue,
            api_url=emulator.url_for(venue),
            stream_url=emulator.stream_url_for(venue),
            feed=Venue.Feed.STREAM,
            stream_stall_ms=QUIET_STALL_MS,
        )
    child = spawn(sys.executable, str(ROOT / "manage.py"), "stream_prices", "--name", "e2e", name="streamer")
    child.wait_for("binance: stream live", timeout=60)
    child.wait_for("kraken: stream live", timeout=60)
    books = pubsub.latest_books(redis_client, SYMBOL)
    assert {venue: (book.bids, book.asks) for venue, book in books.items()} == {
        venue: (levels(BEFORE[0]), levels(BEFORE[1])) for venue in ("binance", "kraken")
    }
    assert all(
        streams.live(beat, now_ms()) for beat in streams.beats(redis_client, ["binance", "kraken"]).values()
    )

    child.proc.send_signal(signal.SIGTERM)

    assert child.proc.wait(timeout=scaled(30)) == 0, child.output()
    assert "streamer stopped" in child.output()
    assert "Unclosed" not in child.output()  # ccxt's clients and their HTTP sessions all closed
    wait_until(
        lambda: emulator.stream_connections("binance") == emulator.stream_connections("kraken") == 0,
        what="every stream connection closed",
    )
    assert streams.beats(redis_client, ["binance", "kraken"]) == {"binance": None, "kraken": None}


@pytest.mark.slow
def test_a_streamed_book_that_crosses_is_withdrawn_and_resynced(
    emulator: Emulator, redis_client: redis.Redis, prices: PubSub
) -> None:
    crossed = ([("64020", "1")], [("64010", "1")])
    with streaming(emulator, redis_client, "binance") as stream:
        live_with(stream, redis_client, BEFORE)
        emulator.stream_updates("binance", SYMBOL, [crossed])
        wait_until(
            lambda: streams.event_counts(redis_client, ["binance"])["binance"].get("crossed"), what="crossed"
        )
        assert pubsub.latest_book(redis_client, SYMBOL, "binance") is None  # withdrawn, nothing put back
        emulator.set_book("binance", SYMBOL, *AFTER)
        live_with(stream, redis_client, AFTER)

    marks = [event for event in received(prices) if isinstance(event, StaleMark)]
    assert "crossed" in {mark.kind for mark in marks}
