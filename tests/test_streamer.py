"""The streamer's steps against real Redis and PostgreSQL: a streamed book reaches Pub/Sub numbered
and stamped as a polled one does; a fault withdraws the venue's books where the listener and the
trade re-check read them, and is counted; a stall, a broken session and a resync run session by
session; and `manage.py stream_prices` stops cleanly on SIGTERM, its clients closed."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from redis.client import PubSub

from tests.conftest import ROOT, Child, child_env, free_port, fund, make_strategy, make_venue
from tests.deadlines import Deadline, scaled, wait_until
from tests.quotes import CHEAP, DEAR, FLAT, book
from trading import pubsub, streams
from trading.clock import now_ms
from trading.core.streams import StreamEvent, StreamState
from trading.core.types import Quote, StaleMark
from trading.listener import Listener
from trading.models import Opportunity, Venue
from trading.observability import heartbeats
from trading.streamer import Session, Streamer, StreamSpec, VenueStream
from trading.venues.base import StreamFault

pytestmark = pytest.mark.django_db

SPEC = StreamSpec(
    name="alpha", ccxt_id="binance", api_url="", stream_url="", stall_ms=3_000, symbols=("BTC/USDT",)
)


@pytest.fixture
def prices(redis_client: redis.Redis, names: pubsub.Names) -> Iterator[PubSub]:
    """Subscribed to BTC/USDT's price channel, the subscription confirmed."""
    channel = redis_client.pubsub()
    channel.subscribe(names.prices("BTC/USDT"))
    deadline = Deadline(5)
    while (confirmed := channel.get_message(timeout=1)) is None and not deadline.passed():
        pass
    assert confirmed is not None
    assert confirmed["type"] == "subscribe"
    yield channel
    channel.close()


def messages(channel: PubSub, quiet_s: float = 0.3) -> list[Quote | StaleMark]:
    """Every price message until the channel has been quiet for `quiet_s`."""
    found = []
    while (message := channel.get_message(timeout=quiet_s)) is not None:
        found.append(pubsub.decode_price_event(message["data"]))
    return found


def stream(redis_client: redis.Redis, spec: StreamSpec = SPEC) -> VenueStream:
    return VenueStream(spec, redis_client, "test-streamer", peers=("alpha", "bravo"))


def test_a_streamed_book_reaches_pubsub_numbered_with_the_venues_stamp_and_ours(
    redis_client: redis.Redis, prices: PubSub
) -> None:
    alpha = stream(redis_client)
    venue_ts = now_ms() - 40
    received = book("alpha", *CHEAP, venue_ts=venue_ts)

    assert alpha.on_book(received) == 1
    assert alpha.on_book(dataclasses.replace(received, venue_ts=venue_ts + 1)) == 1

    first, second = messages(prices)
    assert isinstance(first, Quote)
    assert isinstance(second, Quote)
    assert [(first.seq, first.venue_ts), (second.seq, second.venue_ts)] == [
        (1, venue_ts),
        (2, venue_ts + 1),
    ]
    assert first.received_ts == received.received_ts
    assert (first.bids, first.asks) == (received.bids, received.asks)
    assert pubsub.latest_books(redis_client, "BTC/USDT") == {"alpha": second}


def test_a_venue_is_live_once_every_symbol_has_its_book_and_its_heartbeat_says_so(
    redis_client: redis.Redis,
) -> None:
    alpha = stream(redis_client, dataclasses.replace(SPEC, symbols=("BTC/USDT", "ETH/USDT")))
    alpha.enter(StreamState.SYNCING)

    alpha.on_book(book("alpha", *CHEAP))
    assert streams.beats(redis_client, ["alpha"])["alpha"]["state"] == "syncing"
    alpha.on_book(dataclasses.replace(book("alpha", [("2000", "1")], [("2001", "1")]), symbol="ETH/USDT"))

    beat = streams.beats(redis_client, ["alpha"])["alpha"]
    assert (beat["state"], beat["published"], beat["streamer"]) == ("live", 2, "test-streamer")
    assert streams.live(beat, now_ms())


def test_a_fault_withdraws_the_venues_books_at_once_and_is_counted(
    redis_client: redis.Redis, prices: PubSub, names: pubsub.Names
) -> None:
    alpha = stream(redis_client)
    alpha.on_book(book("alpha", *CHEAP))
    pubsub.publish_quotes(redis_client, [book("bravo", *DEAR, seq=1)])
    messages(prices)

    alpha.mark_stale(StreamFault(StreamEvent.GAP, "alpha: update ids skipped"))

    [mark] = messages(prices)
    assert isinstance(mark, StaleMark)
    assert (mark.venue, mark.symbol, mark.kind) == ("alpha", "BTC/USDT", "gap")
    assert set(pubsub.latest_books(redis_client, "BTC/USDT")) == {"bravo"}
    assert not redis_client.hexists(names.latest_book_times("BTC/USDT"), "alpha")
    assert not redis_client.exists(names.band_mids("alpha", "BTC/USDT"))
    assert streams.event_counts(redis_client, ["alpha"]) == {"alpha": {"gap": 1}}
    assert streams.recent_events(redis_client, "alpha", now_ms()) == ["gap"]
    beat = streams.beats(redis_client, ["alpha"])["alpha"]
    assert (beat["state"], beat["faults_in_a_row"]) == ("stale", 1)
    assert "update ids skipped" in beat["reason"]
    assert not streams.live(beat, now_ms())


def test_the_listener_drops_a_withdrawn_book_and_decides_nothing_on_it(redis_client: redis.Redis) -> None:
    for name in ("alpha", "bravo"):
        fund(make_venue(name), BTC="2", USDT="100000")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"))
    listener = Listener(redis_client)
    listener.load_strategy()
    listener.on_price(pubsub.encode_quote(book("alpha", *CHEAP, seq=1)), now_ms())
    [opened] = listener.on_price(pubsub.encode_quote(book("bravo", *DEAR, seq=1)), now_ms())

    mark = StaleMark("alpha", "BTC/USDT", "checksum", now_ms())
    assert listener.on_price(pubsub.encode_stale(mark), now_ms(), pubsub.names().prices("BTC/USDT")) == []

    assert "alpha" not in listener.books["BTC/USDT"]
    assert listener.open == {}  # the crossing it was part of is closed
    assert Opportunity.objects.get(pk=opened).ticks == 1
    assert listener.stats.stale == {("alpha", "checksum"): 1}
    # bravo's next book finds nothing to cross: alpha's book is gone until its next one, which
    # is decided on afresh.
    assert listener.on_price(pubsub.encode_quote(book("bravo", *DEAR, seq=2)), now_ms()) == []
    assert len(listener.on_price(pubsub.encode_quote(book("alpha", *FLAT, seq=2)), now_ms())) == 1


def test_a_stale_mark_on_another_symbols_channel_is_refused(redis_client: redis.Redis) -> None:
    make_venue("alpha")
    make_strategy()
    listener = Listener(redis_client)
    listener.load_strategy()
    listener.on_price(pubsub.encode_quote(book("alpha", *CHEAP, seq=1)), now_ms())

    mark = StaleMark("alpha", "BTC/USDT", "gap", now_ms())
    listener.on_price(pubsub.encode_stale(mark), now_ms(), pubsub.names().prices("ETH/USDT"))

    assert "alpha" in listener.books["BTC/USDT"]
    assert listener.stats.rejected == {"wrong_channel": 1}


class ScriptedSession:
    """A venue session that hands out the books it was given, then raises its fault (or, without
    one, goes silent), and notes its frames as the books come."""

    def __init__(self, books: list[Quote], fault: StreamFault | None = None) -> None:
        self.books = list(books)
        self.fault = fault
        self.last_frame_ms = now_ms()
        self.closed = False

    async def listed(self, symbols: list[str]) -> list[str]:
        return symbols

    async def next_book(self, symbol: str) -> Quote:
        if self.books:
            self.last_frame_ms = now_ms()
            return dataclasses.replace(self.books.pop(0), received_ts=now_ms())
        if self.fault is not None:
            raise self.fault
        await asyncio.Event().wait()  # silence
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.closed = True


def test_a_silent_session_stalls_and_its_books_are_withdrawn(redis_client: redis.Redis) -> None:
    session = ScriptedSession([book("alpha", *CHEAP)])
    alpha = VenueStream(
        dataclasses.replace(SPEC, stall_ms=300), redis_client, "test", opener=lambda _: session
    )

    asyncio.run(asyncio.wait_for(alpha.session_once(), timeout=30))

    assert session.closed
    assert alpha.state is StreamState.STALE
    assert "no frame for" in alpha.reason
    assert streams.event_counts(redis_client, ["alpha"]) == {"alpha": {"stall": 1}}
    assert pubsub.latest_books(redis_client, "BTC/USDT") == {}


def test_each_fault_resyncs_on_a_fresh_session_with_nothing_of_the_old_book(
    redis_client: redis.Redis,
) -> None:
    ghost = book("alpha", [("30000", "1"), ("29990", "5")], [("30010", "1")])
    fresh = book("alpha", [("29995", "2")], [("30005", "2")])
    sessions = [
        ScriptedSession([ghost], StreamFault(StreamEvent.CHECKSUM, "alpha: checksum 1 != 2")),
        ScriptedSession([fresh]),
    ]
    opened: list[ScriptedSession] = []

    def opener(spec: StreamSpec) -> Session:
        opened.append(sessions.pop(0))
        return opened[-1]

    alpha = VenueStream(SPEC, redis_client, "test", opener=opener)

    async def until_live_again() -> None:
        task = asyncio.create_task(alpha.run())
        while not (len(opened) == 2 and alpha.state is StreamState.LIVE):
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(until_live_again(), timeout=30))

    assert [session.closed for session in opened] == [True, True]
    [kept] = pubsub.latest_books(redis_client, "BTC/USDT").values()
    assert (kept.bids, kept.asks) == (fresh.bids, fresh.asks)
    assert streams.event_counts(redis_client, ["alpha"]) == {"alpha": {"checksum": 1}}
    assert alpha.faults_in_a_row == 0  # live again


@pytest.fixture
def dead_stream_venue() -> Venue:
    """A streaming venue whose websocket root answers nothing (its REST root neither)."""
    port = free_port()
    make_strategy()
    return make_venue(
        "deadws",
        kind=Venue.Kind.CCXT,
        ccxt_id="binance",
        feed=Venue.Feed.STREAM,
        api_url=f"http://127.0.0.1:{port}/binance",
        stream_url=f"ws://127.0.0.1:{port}/binance",
    )


def test_a_streamer_streams_the_venues_set_to_stream_and_says_so(
    redis_client: redis.Redis, dead_stream_venue: Venue
) -> None:
    make_venue("polled", kind=Venue.Kind.CCXT, ccxt_id="kraken")
    streamer = Streamer(redis_client, name="one")

    async def one_round() -> None:
        await streamer.refresh()
        streamer.heartbeat()
        await streamer.stop()

    asyncio.run(one_round())

    assert list(streamer.streams) == []  # stopped
    assert heartbeats.read(redis_client, "streamer:one") is None
    assert streams.beats(redis_client, ["deadws"]) == {"deadws": None}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stream_prices_stops_cleanly_on_sigterm(
    spawn, redis_client: redis.Redis, dead_stream_venue: Venue, settings
) -> None:
    child: Child = spawn(
        sys.executable,
        str(ROOT / "manage.py"),
        "stream_prices",
        "--name",
        "sigterm",
        name="streamer",
        env=child_env(STREAM_STALL_MS="500"),
    )
    child.wait_for("streaming deadws", timeout=60)
    wait_until(lambda: streams.event_counts(redis_client, ["deadws"])["deadws"], what="a counted fault")
    assert heartbeats.read(redis_client, "streamer:sigterm") is not None

    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=scaled(30)) == 0, child.output()

    assert "streamer stopped" in child.output()
    assert "Unclosed" not in child.output()  # every ccxt client was closed
    assert heartbeats.read(redis_client, "streamer:sigterm") is None
    assert streams.beats(redis_client, ["deadws"]) == {"deadws": None}
