"""REST stays the fallback of a streamed venue, against the emulator with the real ccxt client, real
Redis and PostgreSQL: the collector skips a venue whose stream is live and polls it (publishing in
the stream's place) while it is not; a venue fed by both is polled as a cross-check, and a polled
book apart from the streamed one is counted and alerted; repeated faults and a stream down are
alerted through the monitoring checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devtools.emulator import Emulator, emulate
from tests.conftest import make_strategy, make_venue
from tests.quotes import book
from trading import collector, monitoring, pubsub, streams
from trading.clock import now_ms
from trading.core.streams import StreamEvent, StreamState
from trading.models import Alert, Venue
from trading.streamer import StreamSpec, VenueStream
from trading.venues.base import StreamFault

pytestmark = pytest.mark.django_db

BIDS = [["64000.5", "0.25"], ["63999", "1.5"]]
ASKS = [["64001", "0.4"], ["64002.75", "2"]]
DEPTH = "/api/v3/depth"


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate("binance") as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator, settings) -> Iterator[Emulator]:
    settings.COLLECT_TIMEOUT_MS = 2000
    running_emulator.set_book("binance", "BTC/USDT", BIDS, ASKS)
    yield running_emulator
    running_emulator.reset()


def streamed_venue(emulator: Emulator, feed: str) -> Venue:
    make_strategy(symbols=["BTC/USDT"])
    return make_venue(
        "binance", kind=Venue.Kind.CCXT, ccxt_id="binance", api_url=emulator.url_for("binance"), feed=feed
    )


def venue_stream(client: redis.Redis) -> VenueStream:
    spec = StreamSpec("binance", "binance", "", "", 3_000, ("BTC/USDT",))
    return VenueStream(spec, client, "test-streamer")


def live_stream(
    client: redis.Redis, bids: list[list[str]] = BIDS, asks: list[list[str]] = ASKS
) -> VenueStream:
    """The venue's stream, live, its book as streamed published."""
    stream = venue_stream(client)
    stream.on_book(book("binance", [tuple(level) for level in bids], [tuple(level) for level in asks]))
    assert stream.state is StreamState.LIVE
    return stream


def polls(emulator: Emulator, venue: Venue) -> int:
    """How many book requests one collection round of `venue` makes, and what it published."""
    before = emulator.request_count("binance", DEPTH)
    collector.collect_venue(venue.pk)
    return emulator.request_count("binance", DEPTH) - before


def test_a_streamed_venue_with_a_live_stream_is_not_polled(emulator: Emulator, redis_client) -> None:
    venue = streamed_venue(emulator, Venue.Feed.STREAM)
    live_stream(redis_client)

    assert venue.pk not in collector.venues_to_collect()
    assert polls(emulator, venue) == 0


def test_a_streamed_venue_whose_stream_is_down_is_polled_in_its_place(
    emulator: Emulator, redis_client
) -> None:
    venue = streamed_venue(emulator, Venue.Feed.STREAM)
    stream = live_stream(redis_client)
    stream.mark_stale(StreamFault(StreamEvent.DISCONNECT, "binance: connection closed"))

    assert venue.pk in collector.venues_to_collect()
    assert polls(emulator, venue) == 1
    polled = pubsub.latest_book(redis_client, "BTC/USDT", "binance")
    assert polled is not None
    assert polled.seq == 2  # numbered on the venue's one sequence, after the streamed book

    stream.enter(StreamState.SYNCING)  # the next session
    stream.on_book(book("binance", [("64000", "1")], [("64001", "1")]))  # resynced: live again
    assert venue.pk not in collector.venues_to_collect()


def test_a_streamed_venue_without_a_streamer_is_polled(emulator: Emulator, redis_client) -> None:
    venue = streamed_venue(emulator, Venue.Feed.STREAM)

    assert polls(emulator, venue) == 1
    assert pubsub.latest_book(redis_client, "BTC/USDT", "binance") is not None


def test_a_streamer_gone_quiet_is_no_live_stream(emulator: Emulator, redis_client) -> None:
    venue = streamed_venue(emulator, Venue.Feed.STREAM)
    beat = live_stream(redis_client).beat_body()
    # The heartbeat of a streamer that froze: it still says live, but it is old.
    streams.write_beat(redis_client, "binance", {**beat, "at_ms": beat["at_ms"] - 10_000})

    assert venue.pk in collector.venues_to_collect()
    assert polls(emulator, venue) == 1


def test_a_venue_fed_by_both_is_cross_checked_and_nothing_is_published(
    emulator: Emulator, redis_client
) -> None:
    venue = streamed_venue(emulator, Venue.Feed.BOTH)
    live_stream(redis_client)
    streamed = pubsub.latest_book(redis_client, "BTC/USDT", "binance")

    assert venue.pk in collector.venues_to_collect()
    assert polls(emulator, venue) == 1

    assert pubsub.latest_book(redis_client, "BTC/USDT", "binance") == streamed
    assert streams.event_counts(redis_client, ["binance"]) == {"binance": {}}
    monitoring.run_once()
    assert not Alert.objects.filter(key="stream_mismatch:binance").exists()


def test_a_polled_book_apart_from_the_streamed_one_is_counted_and_alerted(
    emulator: Emulator, redis_client, settings
) -> None:
    settings.STREAM_CROSSCHECK_BPS = 10
    venue = streamed_venue(emulator, Venue.Feed.BOTH)
    live_stream(redis_client, asks=[["64200", "0.4"]])  # a ghost: 31 bps off the venue's ask

    assert polls(emulator, venue) == 1

    assert streams.event_counts(redis_client, ["binance"]) == {"binance": {"mismatch": 1}}
    monitoring.run_once()
    alert = Alert.objects.get(key="stream_mismatch:binance", resolved_at__isnull=True)
    assert "more than 10 bps from the streamed one" in alert.subject


def test_faults_that_repeat_within_the_window_open_an_alert(redis_client, settings) -> None:
    settings.STREAM_FAULT_LIMIT = 3
    make_venue("binance", kind=Venue.Kind.CCXT, ccxt_id="binance", feed=Venue.Feed.STREAM)
    stream = venue_stream(redis_client)
    for kind in (StreamEvent.GAP, StreamEvent.STALL):
        stream.mark_stale(StreamFault(kind, "binance: broke"))
    monitoring.run_once()
    assert not Alert.objects.filter(key="stream_faults:binance").exists()

    stream.mark_stale(StreamFault(StreamEvent.GAP, "binance: broke again"))
    monitoring.run_once()

    alert = Alert.objects.get(key="stream_faults:binance", resolved_at__isnull=True)
    assert "faulted 3 times" in alert.subject
    assert "gap 2, stall 1" in alert.subject


def test_a_streamed_venue_no_streamer_serves_is_alerted_as_down(redis_client) -> None:
    make_venue("binance", kind=Venue.Kind.CCXT, ccxt_id="binance", feed=Venue.Feed.STREAM)
    make_venue("polled", kind=Venue.Kind.CCXT, ccxt_id="kraken")
    monitoring.run_once()

    assert set(Alert.objects.filter(key__startswith="stream_down:").values_list("key", flat=True)) == {
        "stream_down:binance"
    }
    live_stream(redis_client)
    assert monitoring.check_streams_down(redis_client, now_ms()) == []


def test_a_stream_resyncing_briefly_is_not_down(redis_client) -> None:
    make_venue("binance", kind=Venue.Kind.CCXT, ccxt_id="binance", feed=Venue.Feed.STREAM)
    venue_stream(redis_client).mark_stale(StreamFault(StreamEvent.CHECKSUM, "binance: checksum"))

    assert monitoring.check_streams_down(redis_client, now_ms()) == []
    later = now_ms() + 6_000
    [down] = monitoring.check_streams_down(redis_client, later)
    assert "stale for" in down.subject
