"""Heartbeats and /healthz against real Redis and PostgreSQL (and a real worker where it matters)."""

from __future__ import annotations

import pytest
import redis
from django.test import Client

from tests.conftest import Child, make_strategy, make_venue
from tests.deadlines import wait_until
from tests.quotes import book, publish
from trading import collector
from trading.clock import now_ms
from trading.core.streams import StreamEvent
from trading.listener import Listener
from trading.models import Venue
from trading.observability import heartbeats
from trading.streamer import StreamSpec, VenueStream
from trading.venues.base import StreamFault

pytestmark = pytest.mark.django_db(transaction=True)

SPREAD = [("29990", "1")], [("30000", "1")]


def healthz() -> tuple[int, dict]:
    response = Client().get("/healthz")
    return response.status_code, response.json()


@pytest.fixture
def running(redis_client: redis.Redis) -> Listener:
    """Two fresh venues, a live listener heartbeat and a worker heartbeat: everything up."""
    for name in ("alpha", "bravo"):
        make_venue(name, max_quote_age_ms=5_000)
    make_strategy()
    listener = Listener(redis_client, name="main")
    listener.load_strategy()
    listener.heartbeat()
    heartbeats.write(redis_client, "worker:w1@host", {"hostname": "w1@host", "at_ms": now_ms()}, ttl=15)
    publish(redis_client, book("alpha", *SPREAD), book("bravo", *SPREAD))
    return listener


# --- heartbeats -----------------------------------------------------------------------------------


def test_heartbeats_are_read_by_kind_and_expire(redis_client: redis.Redis, names) -> None:
    heartbeats.write(redis_client, "worker:short@host", {"pid": 1}, ttl=1)
    heartbeats.write(redis_client, "worker:long@host", {"pid": 2}, ttl=30)
    heartbeats.write(redis_client, "collector:alpha", {"ok": True}, ttl=30)

    assert heartbeats.read_all(redis_client, "worker") == {"short@host": {"pid": 1}, "long@host": {"pid": 2}}
    assert 0 < redis_client.ttl(names.heartbeat("worker:short@host")) <= 1

    wait_until(lambda: not redis_client.exists(names.heartbeat("worker:short@host")), what="expiry")
    assert heartbeats.read_all(redis_client, "worker") == {"long@host": {"pid": 2}}
    assert heartbeats.read_all(redis_client, "collector") == {"alpha": {"ok": True}}
    assert heartbeats.read_all(redis_client, "listener") == {}


def test_a_worker_is_seen_alive_as_soon_as_its_heartbeat_starts(redis_client: redis.Redis) -> None:
    beater = heartbeats.worker_beater("w9@host")

    beater.start()  # a monitoring task the worker runs next must not report it missing
    try:
        assert set(heartbeats.read_all(redis_client, "worker")) == {"w9@host"}
    finally:
        beater.stop()
    assert heartbeats.read_all(redis_client, "worker") == {}


def test_the_listener_heartbeat_is_readable_with_its_counters(redis_client: redis.Redis) -> None:
    make_strategy()
    listener = Listener(redis_client, name="edge")
    listener.load_strategy()
    listener.on_price(b"not json", now_ms())

    listener.heartbeat()

    beat = heartbeats.read_all(redis_client, "listener")["edge"]
    assert beat["rejected"] == {"bad_json": 1}
    assert beat["name"] == "edge"


def test_a_listener_that_stops_cleanly_takes_its_heartbeat_with_it(redis_client: redis.Redis) -> None:
    make_strategy()
    listener = Listener(redis_client, name="leaving")
    listener.heartbeat()
    assert "leaving" in heartbeats.read_all(redis_client, "listener")

    listener.run(should_stop=lambda: True)

    assert heartbeats.read_all(redis_client, "listener") == {}


def test_a_collection_round_leaves_a_collector_heartbeat(redis_client: redis.Redis) -> None:
    venue = make_venue("sim-a", kind=Venue.Kind.SIMULATED)
    make_strategy()

    collector.collect_venue(venue.pk)

    beat = heartbeats.read_all(redis_client, "collector")["sim-a"]
    assert (beat["ok"], beat["published"], beat["error"]) == (True, 1, None)
    assert beat["last_quote_ms"] == beat["at_ms"]


def test_a_failed_round_keeps_the_time_of_the_last_good_quote(redis_client: redis.Redis) -> None:
    venue = make_venue("sim-a", kind=Venue.Kind.SIMULATED)
    make_strategy()
    collector.collect_venue(venue.pk)
    good = heartbeats.read_all(redis_client, "collector")["sim-a"]["last_quote_ms"]
    Venue.objects.filter(pk=venue.pk).update(
        kind=Venue.Kind.CCXT, ccxt_id="binance", api_url="http://127.0.0.1:9/"
    )

    collector.collect_venue(venue.pk)

    beat = heartbeats.read_all(redis_client, "collector")["sim-a"]
    assert beat["ok"] is False
    assert beat["error"]
    assert beat["last_quote_ms"] == good


@pytest.mark.slow
def test_a_running_worker_keeps_a_heartbeat_until_it_stops(
    redis_client: redis.Redis, celery_worker: Child, names
) -> None:
    wait_until(lambda: heartbeats.read_all(redis_client, "worker"), what="a worker heartbeat")

    [(hostname, beat)] = heartbeats.read_all(redis_client, "worker").items()
    assert hostname.startswith("test-")
    assert beat["hostname"] == hostname
    assert 0 < redis_client.ttl(names.heartbeat(f"worker:{hostname}")) <= 15

    celery_worker.stop()  # a clean shutdown takes its heartbeat with it
    assert heartbeats.read_all(redis_client, "worker") == {}


# --- /healthz -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_healthz_is_200_with_a_real_worker_a_listener_and_fresh_venues(
    redis_client: redis.Redis, celery_worker: Child
) -> None:
    for name in ("alpha", "bravo"):
        make_venue(name)
    make_strategy()
    Listener(redis_client, name="main").heartbeat()
    wait_until(lambda: heartbeats.read_all(redis_client, "worker"), what="a worker heartbeat")
    publish(redis_client, book("alpha", *SPREAD), book("bravo", *SPREAD))

    status, report = healthz()

    assert status == 200, report
    checks = report["checks"]
    assert report["healthy"] is True
    assert {name for name, check in checks.items() if check["ok"]} == {
        "database",
        "redis",
        "listeners",
        "workers",
        "venues",
        "streams",
    }
    assert list(checks["listeners"]["processes"]) == ["main"]
    assert set(checks["venues"]["venues"]) == {"alpha", "bravo"}


def test_healthz_is_503_when_the_listener_heartbeat_is_missing(
    running: Listener, redis_client: redis.Redis, names
) -> None:
    assert healthz()[0] == 200
    redis_client.delete(names.heartbeat("listener:main"))  # what expiry does to a dead listener

    status, report = healthz()

    assert status == 503
    assert report["healthy"] is False
    assert report["checks"]["listeners"] == {"ok": False, "processes": {}}
    assert report["checks"]["workers"]["ok"] is True


def test_healthz_is_503_when_a_venue_is_stale(running: Listener, redis_client: redis.Redis, names) -> None:
    for kept in (names.latest_books("BTC/USDT"), names.latest_book_times("BTC/USDT")):
        redis_client.hdel(kept, "bravo")  # bravo's collector stopped 6 s ago: its last book is old
    publish(redis_client, book("bravo", *SPREAD, received_ts=now_ms() - 6_000))

    status, report = healthz()

    assert status == 503
    venues = report["checks"]["venues"]
    assert venues["ok"] is False
    assert venues["venues"]["alpha"]["ok"] is True
    assert venues["venues"]["bravo"]["ok"] is False
    assert venues["venues"]["bravo"]["book_age_ms"]["BTC/USDT"] >= 6_000


def test_healthz_is_503_when_a_venue_has_no_book(running: Listener) -> None:
    make_venue("charlie")

    status, report = healthz()

    assert status == 503
    assert report["checks"]["venues"]["venues"]["charlie"]["book_age_ms"] == {"BTC/USDT": None}


def test_healthz_is_503_when_redis_does_not_answer(running: Listener, settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"

    status, report = healthz()

    assert status == 503
    assert report["checks"]["database"]["ok"] is True
    assert report["checks"]["redis"]["ok"] is False


# --- streams --------------------------------------------------------------------------------------


def test_healthz_shows_each_streamed_venues_stream_and_is_503_while_one_is_not_live(
    running: Listener, redis_client: redis.Redis
) -> None:
    Venue.objects.filter(name="alpha").update(kind=Venue.Kind.CCXT, ccxt_id="binance", feed=Venue.Feed.STREAM)
    spec = StreamSpec("alpha", "binance", "", "", 3_000, ("BTC/USDT",))
    alpha = VenueStream(spec, redis_client, "streamer-1")
    alpha.on_book(book("alpha", *SPREAD))

    status, report = healthz()
    assert status == 200, report
    entry = report["checks"]["streams"]["venues"]["alpha"]
    assert (entry["ok"], entry["state"], entry["streamer"]) == (True, "live", "streamer-1")
    assert entry["published"] == 1
    assert set(report["checks"]["streams"]["venues"]) == {"alpha"}  # bravo is polled only

    alpha.mark_stale(StreamFault(StreamEvent.CHECKSUM, "alpha: checksum 1 != 2"))

    status, report = healthz()
    assert status == 503
    streams_check = report["checks"]["streams"]
    assert streams_check["ok"] is False
    entry = streams_check["venues"]["alpha"]
    assert (entry["state"], entry["events"]) == ("stale", {"checksum": 1})
    assert "checksum 1 != 2" in entry["reason"]
