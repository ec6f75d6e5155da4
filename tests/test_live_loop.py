"""The live loop end to end: real Redis Pub/Sub, a real listener process, a real Celery worker."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis

from tests.conftest import Child, PrivateRedis, child_env, set_limits
from tests.deadlines import wait_until
from tests.quotes import CHEAP, DEAR, FLAT, book, publish
from trading import pubsub
from trading.clock import now_ms
from trading.models import Opportunity, Order, Trade
from trading.pubsub import Names
from trading.tasks import execute_opportunity

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def heartbeat(client: redis.Redis, names: Names) -> dict:
    raw = client.get(names.heartbeat("listener:e2e"))
    return json.loads(raw) if raw else {}


def start_listener(spawn: Callable[..., Child], **env: str) -> Child:
    listener = spawn(
        sys.executable, "manage.py", "listen_prices", "--name", "e2e", name="listener", env=child_env(**env)
    )
    listener.wait_for("listening", timeout=60)
    return listener


@pytest.fixture
def listener(market: None, spawn: Callable[..., Child]) -> Child:
    return start_listener(spawn)


def test_a_known_gap_gives_one_trade_with_the_hand_computed_pnl(
    market: None, spawn: Callable[..., Child], celery_worker: Child, redis_client: redis.Redis
) -> None:
    set_limits(pair_cooldown_seconds=3600)
    start_listener(spawn)
    for _ in range(3):  # the gap persists for three ticks: one opportunity, then the pair cools down
        publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
        time.sleep(0.05)

    wait_until(Trade.objects.exists, what="a trade")
    opportunity = Opportunity.objects.get()
    wait_until(lambda: Opportunity.objects.filter(status="executed").exists(), what="executed status")
    trade = Trade.objects.get()
    assert trade.opportunity_id == opportunity.pk
    assert trade.realized_pnl == Decimal("19.95")  # 0.5 x (30100 - 30000) - 15 - 15.05
    assert sorted(Order.objects.values_list("side", "filled")) == [
        ("buy", Decimal("0.5")),
        ("sell", Decimal("0.5")),
    ]

    execute_opportunity.apply_async((opportunity.pk,))  # the same task, delivered again
    celery_worker.wait_for(f"opportunity {opportunity.pk} not claimable")
    assert (Trade.objects.count(), Order.objects.count(), Opportunity.objects.count()) == (1, 2, 1)


def test_a_stale_quote_is_rejected_with_its_reason(listener: Child, redis_client: redis.Redis) -> None:
    publish(redis_client, book("alpha", *CHEAP, venue_ts=now_ms() - 60_000), book("bravo", *DEAR))

    wait_until(Opportunity.objects.exists, what="an opportunity row")
    assert list(Opportunity.objects.values_list("status", "reason")) == [("rejected", "stale_quote")]
    assert not Order.objects.exists()


def test_malformed_messages_are_counted_and_the_listener_keeps_deciding(
    listener: Child, redis_client: redis.Redis, names: Names
) -> None:
    channel = names.prices("BTC/USDT")
    good = {"venue": "alpha", "symbol": "BTC/USDT", "seq": 1, "received_ts": now_ms()}
    bad = [
        b"this is not json",
        json.dumps({"venue": "alpha"}),
        json.dumps({**good, "bids": [["-5", "1"]], "asks": [["30000", "1"]]}),
        json.dumps({**good, "bids": [["NaN", "1"]], "asks": [["30000", "1"]]}),
        json.dumps({**good, "bids": [["30010", "1"]], "asks": [["30000", "1"]]}),
        json.dumps({**good, "venue": "nowhere", "bids": [["29990", "1"]], "asks": [["30000", "1"]]}),
    ]
    for message in bad:
        redis_client.publish(channel, message)
    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))

    wait_until(Opportunity.objects.exists, what="an opportunity after the junk")
    expected = {
        "bad_json": 1,
        "missing_field": 1,
        "non_positive": 1,
        "not_finite": 1,
        "crossed": 1,
        "unknown_venue": 1,
    }
    wait_until(lambda: heartbeat(redis_client, names).get("rejected") == expected, what="counted rejections")
    assert listener.proc.poll() is None


def test_the_listener_survives_a_redis_restart_mid_stream(
    market: None, spawn: Callable[..., Child], private_redis: PrivateRedis, names: Names
) -> None:
    start_listener(spawn, REDIS_URL=private_redis.url)
    client = private_redis.client
    for _ in range(3):
        publish(client, book("alpha", *FLAT), book("bravo", *FLAT))
    wait_until(lambda: heartbeat(client, names).get("ticks") == 6, what="six ticks before the restart")

    private_redis.restart()
    # Redis came back empty: sequence numbers start again at 1. The first book of each venue claims
    # a new numbering, and the next one confirms it: from then on the listener follows it.
    wait_until(lambda: heartbeat(client, names).get("reconnects") == 1, what="a reconnect")
    publish(client, book("alpha", *CHEAP), book("bravo", *DEAR))
    publish(client, book("alpha", *CHEAP), book("bravo", *DEAR))

    wait_until(Opportunity.objects.exists, what="a decision after the restart")
    wait_until(lambda: heartbeat(client, names).get("ticks") == 8, what="two more ticks")
    beat = heartbeat(client, names)
    assert (beat["rejected"], beat["restarts"], beat["missed"]) == ({"out_of_order": 2}, 2, 0)
    assert Opportunity.objects.get().status == "dispatched"


def publish_counted(client: redis.Redis, names: Names) -> int:
    """Publish one alpha book numbered as a collector would; returns how many subscribers got it."""
    (seq,) = pubsub.reserve_sequences(client, [("alpha", "BTC/USDT")])
    quote = book("alpha", *FLAT, seq=seq)
    return int(client.publish(names.prices(quote.symbol), pubsub.encode_quote(quote)))


RESTARTS = 3


def test_books_published_while_the_listener_resubscribes_are_counted_as_missed_exactly(
    market: None, spawn: Callable[..., Child], private_redis: PrivateRedis, names: Names
) -> None:
    # Books go out as fast as the test can publish them: tens of thousands may be lost in a slow
    # reconnect, all of them a plausible gap here.
    start_listener(spawn, REDIS_URL=private_redis.url, SEQ_MAX_GAP=str(10**9))
    client = private_redis.client
    delivered = lost = 0
    for _ in range(5):
        delivered += publish_counted(client, names)
    wait_until(lambda: heartbeat(client, names).get("ticks") == delivered, what="the first books taken")

    for restart in range(1, RESTARTS + 1):
        private_redis.restart(keep_data=True)
        # PUBLISH answers how many subscribers got the message: none until the listener is back.
        while (receivers := publish_counted(client, names)) == 0:
            lost += 1
        delivered += receivers
        expected = (restart, delivered)  # the heartbeat's reconnects and ticks once the listener is back
        wait_until(
            lambda expected=expected: (
                (heartbeat(client, names).get("reconnects"), heartbeat(client, names).get("ticks"))
                == expected
            ),
            what=f"the listener back after restart {restart}",
        )

    wait_until(lambda: heartbeat(client, names).get("missed") == lost, what=f"{lost} missed books counted")
    beat = heartbeat(client, names)
    print(f"redis restarts: {RESTARTS}, books delivered: {delivered}, published while away: {lost}")
    assert lost > 0, "every restart was over before a book could be published: nothing was measured"
    assert (beat["rejected"], beat["restarts"], beat["ticks"]) == ({}, 0, delivered)


def test_sigterm_stops_the_listener_cleanly(listener: Child) -> None:
    assert listener.stop() == 0
    assert "listener stopped" in listener.output()
