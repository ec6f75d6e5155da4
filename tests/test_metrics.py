"""/metrics: Prometheus text whose counts include every process (prefork worker children and the
separate listener) through prometheus-client's multiprocess mode, and the trade record."""

from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Child, child_env, make_strategy, make_venue, start_worker
from tests.deadlines import wait_until
from tests.quotes import CHEAP, DEAR, book, publish
from trading import collector, pubsub
from trading.clock import now_ms
from trading.core.streams import StreamEvent
from trading.core.types import StaleMark
from trading.listener import Listener
from trading.models import Opportunity, Trade, Venue
from trading.streamer import StreamSpec, VenueStream
from trading.tasks import execute_opportunity
from trading.venues.base import StreamFault

pytestmark = pytest.mark.django_db(transaction=True)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def prefork_worker(spawn: Callable[..., Child]) -> Child:
    """A real worker with two prefork children: their counts must add up in /metrics."""
    return start_worker(spawn, pool="prefork", concurrency=2)


@pytest.mark.slow
def test_counts_from_the_listener_process_and_prefork_children_reach_metrics(
    market: None, spawn: Callable[..., Child], prefork_worker: Child, redis_client: redis.Redis
) -> None:
    before = scrape()
    listener = spawn(
        sys.executable, "manage.py", "listen_prices", "--name", "metrics", name="listener", env=child_env()
    )
    listener.wait_for("listening", timeout=60)

    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
    wait_until(lambda: Opportunity.objects.filter(status="executed").exists(), what="an executed trade")

    # The listener's figures travel in its heartbeat, written every second.
    wait_until(lambda: value(scrape(), "arb_ticks_total", listener="metrics") == 2, what="two ticks")
    after = scrape()
    assert value(after, "arb_decision_seconds_count", listener="metrics") == 2
    assert value(after, "arb_decision_seconds_bucket", listener="metrics", le="+Inf") == 2
    assert value(after, "arb_decision_seconds_sum", listener="metrics") > 0
    opened = value(after, "arb_opportunities_total", status="dispatched")
    assert opened - value(before, "arb_opportunities_total", status="dispatched") == 1
    executed = value(after, "arb_opportunities_total", status="executed")
    assert executed - value(before, "arb_opportunities_total", status="executed") == 1
    assert value(after, "arb_trades_total", mode="paper") == 1
    assert value(after, "arb_realized_pnl", mode="paper") == pytest.approx(19.95)


@pytest.mark.slow
def test_task_failures_in_prefork_children_are_counted(prefork_worker: Child) -> None:
    venue = make_venue("alpha")
    # No strategy on the row and none active: execution raises, so the task fails.
    failing = [
        Opportunity.objects.create(
            symbol="BTC/USDT",
            buy_venue=venue,
            sell_venue=venue,
            status="dispatched",
            detected_at="2026-01-01T00:00:00Z",
            last_seen_at="2026-01-01T00:00:00Z",
        )
        for _ in range(3)
    ]
    before = value(scrape(), "arb_task_failures_total", task="trade.execute_opportunity")
    for opportunity in failing:
        execute_opportunity.apply_async((opportunity.pk,))

    wait_until(lambda: Opportunity.objects.filter(status="failed").count() == 3, what="three failures")
    wait_until(
        lambda: value(scrape(), "arb_task_failures_total", task="trade.execute_opportunity") - before == 3,
        what="three counted failures",
    )


def test_sequence_gaps_and_rejections_seen_by_a_listener_are_exposed(redis_client: redis.Redis) -> None:
    make_venue("alpha")
    make_strategy()
    listener = Listener(redis_client, name="gappy")
    listener.load_strategy()
    for seq in (1, 5):  # three messages never arrived
        listener.on_price(pubsub.encode_quote(book("alpha", *CHEAP, seq=seq)), now_ms())
    listener.on_price(b"not json", now_ms())

    listener.heartbeat()

    samples = scrape()
    assert value(samples, "arb_sequence_gap_messages_total", listener="gappy") == 3
    assert value(samples, "arb_price_events_rejected_total", listener="gappy", reason="bad_json") == 1
    assert value(samples, "arb_ticks_total", listener="gappy") == 2
    assert value(samples, "arb_decision_seconds_count", listener="gappy") == 2


def test_trades_and_realized_pnl_come_from_the_trade_record() -> None:
    alpha, bravo = make_venue("alpha"), make_venue("bravo")
    for pnl in ("12.5", "-2.25"):
        opportunity = Opportunity.objects.create(
            symbol="BTC/USDT",
            buy_venue=alpha,
            sell_venue=bravo,
            status="executed",
            detected_at="2026-01-01T00:00:00Z",
            last_seen_at="2026-01-01T00:00:00Z",
        )
        Trade.objects.create(
            opportunity=opportunity,
            symbol="BTC/USDT",
            buy_venue=alpha,
            sell_venue=bravo,
            amount=Decimal("0.1"),
            expected_pnl=Decimal("10"),
            realized_pnl=Decimal(pnl),
            fees=Decimal("1"),
        )

    samples = scrape()

    assert value(samples, "arb_trades_total", mode="paper") == 2
    assert value(samples, "arb_realized_pnl", mode="paper") == pytest.approx(10.25)


def test_metrics_show_quotes_published_by_a_collection_round(redis_client: redis.Redis) -> None:
    venue = make_venue("sim-a", kind=Venue.Kind.SIMULATED)
    make_strategy(symbols=["BTC/USDT", "ETH/USDT"])
    before = value(scrape(), "arb_quotes_published_total", venue="sim-a")

    collector.collect_venue(venue.pk)

    assert value(scrape(), "arb_quotes_published_total", venue="sim-a") - before == 2


def test_every_listener_heartbeat_counter_is_exported(redis_client: redis.Redis) -> None:
    from trading.listener import Stats
    from trading.observability.metrics import LISTENER_COUNTERS

    make_venue("alpha")
    make_strategy(symbols=["BTC/USDT"])
    listener = Listener(redis_client, name="counted")
    listener.load_strategy()
    listener.stats.ignored, listener.stats.errors, listener.stats.reconnects = 3, 2, 1
    listener.on_price(pubsub.encode_quote(book("nowhere", *CHEAP, seq=1)), now_ms())
    listener.on_price(pubsub.encode_stale(StaleMark("alpha", "BTC/USDT", "gap", now_ms())), now_ms())
    listener.heartbeat()

    samples = scrape()

    exported = {key for key, _, _ in LISTENER_COUNTERS} | {"rejected", "venue_rejected", "stale"}
    assert set(Stats().as_dict()) == exported
    assert value(samples, "arb_listener_ignored_total", listener="counted") == 3
    assert value(samples, "arb_listener_errors_total", listener="counted") == 2
    assert value(samples, "arb_listener_reconnects_total", listener="counted") == 1
    assert (
        value(
            samples,
            "arb_venue_price_events_rejected_total",
            listener="counted",
            venue="nowhere",
            reason="unknown_venue",
        )
        == 1
    )
    stale = {"listener": "counted", "venue": "alpha", "kind": "gap"}
    assert value(samples, "arb_listener_stale_books_total", **stale) == 1
    assert value(samples, "arb_metrics_source_up", source="redis") == 1
    assert value(samples, "arb_metrics_source_up", source="database") == 1


def test_metrics_answer_without_redis_and_say_so(settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    samples = scrape()

    assert value(samples, "arb_metrics_source_up", source="redis") == 0
    assert value(samples, "arb_metrics_source_up", source="database") == 1


def test_metrics_show_the_storage_queue_and_what_it_could_not_keep(
    redis_client: redis.Redis, names: pubsub.Names, settings
) -> None:
    settings.QUOTE_BUFFER_MAX = 1
    pubsub.publish_quotes(redis_client, [book("alpha", *CHEAP, seq=1), book("alpha", *CHEAP, seq=2)])

    samples = scrape()

    assert value(samples, "arb_quotes_buffered") == 1
    assert value(samples, "arb_quotes_unstored_total", venue="alpha") == 1


def test_each_streamed_venues_books_state_and_events_are_exported(redis_client: redis.Redis) -> None:
    spec = StreamSpec("alpha", "binance", "", "", 3_000, ("BTC/USDT",))
    alpha = VenueStream(spec, redis_client, "streamer-1")
    alpha.on_book(book("alpha", *CHEAP))
    alpha.on_book(book("alpha", *DEAR))
    alpha.heartbeat()  # as the streamer's loop does every second
    samples = scrape()
    assert value(samples, "arb_stream_updates_total", venue="alpha", streamer="streamer-1") == 2
    assert value(samples, "arb_stream_live", venue="alpha") == 1

    for kind in (StreamEvent.GAP, StreamEvent.GAP, StreamEvent.STALL):
        alpha.mark_stale(StreamFault(kind, "alpha: broke"))

    samples = scrape()
    assert value(samples, "arb_stream_live", venue="alpha") == 0
    assert value(samples, "arb_stream_events_total", venue="alpha", kind="gap") == 2
    assert value(samples, "arb_stream_events_total", venue="alpha", kind="stall") == 1
