"""Every unit of money accounted for, on paper against real PostgreSQL and Redis: liquidity taken
once, crossings that trade again once settled, stale snapshots dropped, failures that leave a
position resumable and alerted, and every outcome in realized PnL."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from tests.conftest import PrivateRedis, fund, make_strategy, make_venue, orders_by_key, set_limits
from tests.deadlines import wait_until
from tests.quotes import CHEAP, DEAR, FLAT, book, open_known_gap, publish
from trading import execution, lifecycle, pubsub, risk_controls, settlement, trade_store
from trading.clock import now_ms
from trading.listener import Listener
from trading.models import Alert, Balance, KillSwitch, Opportunity, Order, Trade
from trading.notify import rules

pytestmark = pytest.mark.django_db
Status = Opportunity.Status


def tick(listener: Listener, client: redis.Redis, *venues: str) -> list[int]:
    """The listener takes each named venue's latest book in turn; the ids it opened."""
    books = pubsub.latest_books(client, "BTC/USDT")
    return [new for venue in venues for new in listener.on_price(pubsub.encode_quote(books[venue]), now_ms())]


def ledger() -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    return {(b.venue.name, b.asset): (b.free, b.locked) for b in Balance.objects.select_related("venue")}


def reserved_then_crashed(opportunity: Opportunity) -> None:
    """A worker that recorded the orders and died before sending them."""
    assert isinstance(execution.claim_and_record(opportunity.pk), execution.Plan)


# --- liquidity taken once -------------------------------------------------------------------------


def test_three_trades_on_one_snapshot_take_each_level_once(redis_client: redis.Redis) -> None:
    """bravo offers 0.08 BTC at 30000 and more at 30010; alpha, charlie and delta all bid 30100.
    Three opportunities of 0.05 open on the same snapshot, each sized on its top. The first buys
    at 30000, the second gets the 0.03 left there and 0.02 at 30010, the third only 30010: filled
    together they never take more than the snapshot offered, and the later ones earn less than
    the listener expected."""
    fund(make_venue("bravo"), BTC="0", USDT="100000")
    for name in ("alpha", "charlie", "delta"):
        fund(make_venue(name), BTC="1", USDT="0")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.05"), ttl_ms=60_000)
    dear = [("30100", "1")], [("30110", "1")]
    publish(
        redis_client,
        book("bravo", [("29990", "1")], [("30000", "0.08"), ("30010", "1")]),
        *(book(name, *dear) for name in ("alpha", "charlie", "delta")),
    )
    listener = Listener(redis_client)
    listener.load_strategy()

    opened = tick(listener, redis_client, "bravo", "alpha", "charlie", "delta")

    assert len(opened) == 3
    assert {Opportunity.objects.get(pk=pk).expected_profit for pk in opened} == {Decimal("1.9950")}
    for opportunity_id in opened:
        assert execution.execute_opportunity(opportunity_id) == "executed"
    buys = Order.objects.filter(side="buy").order_by("pk")
    assert [order.average_price for order in buys] == [Decimal(30000), Decimal(30004), Decimal(30010)]
    trades = Trade.objects.order_by("pk")
    assert [t.realized_pnl < t.expected_pnl for t in trades] == [False, True, True]


# --- one trade per crossing, no more: re-armed once settled ---------------------------------------


def test_a_settled_crossing_trades_again_on_a_newer_book_but_waits_out_the_pair_cooldown(
    market: None, redis_client: redis.Redis
) -> None:
    listener = Listener(redis_client)
    listener.load_strategy()
    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
    [first] = tick(listener, redis_client, "alpha", "bravo")
    assert execution.execute_opportunity(first) == "executed"
    publish(redis_client, book("bravo", *DEAR))
    assert tick(listener, redis_client, "bravo") == []  # not told yet: still in flight

    listener.refresh_venues()  # learns from the record that its trade settled
    publish(redis_client, book("bravo", *DEAR))
    [second] = tick(listener, redis_client, "bravo")

    assert Opportunity.objects.get(pk=second).status == Status.DISPATCHED
    assert (listener.stats.crossings, listener.stats.opportunities) == (1, 2)
    assert execution.execute_opportunity(second) == "executed"

    set_limits(pair_cooldown_seconds=3600)
    listener.refresh_venues()
    publish(redis_client, book("bravo", *DEAR))
    assert tick(listener, redis_client, "bravo") == []  # settled, but the pair cools down first


def test_a_settled_event_re_arms_at_once(market: None, redis_client: redis.Redis) -> None:
    listener = Listener(redis_client)
    listener.load_strategy()
    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
    [first] = tick(listener, redis_client, "alpha", "bravo")
    assert execution.execute_opportunity(first) == "executed"

    listener.on_event(pubsub.encode({"opportunity": first, "status": "executed", "settled": True}))
    publish(redis_client, book("alpha", *CHEAP))

    assert len(tick(listener, redis_client, "alpha")) == 1


# --- stale pairs ----------------------------------------------------------------------------------


def test_an_older_snapshot_published_after_a_newer_one_is_neither_kept_nor_decided_on(
    market: None, redis_client: redis.Redis
) -> None:
    newer = book("alpha", *CHEAP)
    older = dataclasses.replace(newer, received_ts=newer.received_ts - 500, bids=((Decimal(1), Decimal(1)),))
    publish(redis_client, newer)
    publish(redis_client, older)  # a slower collection round finishing last, with a higher seq

    assert pubsub.latest_book(redis_client, "BTC/USDT", "alpha") == dataclasses.replace(newer, seq=1)
    listener = Listener(redis_client)
    listener.load_strategy()
    listener.on_price(pubsub.encode_quote(dataclasses.replace(newer, seq=1)), now_ms())
    listener.on_price(pubsub.encode_quote(dataclasses.replace(older, seq=2)), now_ms())
    assert listener.books["BTC/USDT"]["alpha"].seq == 1
    assert listener.stats.rejected["older_snapshot"] == 1


# --- every outcome is realized PnL ----------------------------------------------------------------


@pytest.fixture
def one_sided(market: None, redis_client: redis.Redis) -> Opportunity:
    """Both orders recorded; by the time they go out bravo's bid fell below the sell's guard."""
    opportunity = open_known_gap(redis_client)
    reserved_then_crashed(opportunity)
    publish(redis_client, book("bravo", *FLAT))
    return opportunity


def test_a_leg_failure_and_its_hedge_are_a_realized_loss_that_trips_the_daily_limit(
    one_sided: Opportunity, django_capture_on_commit_callbacks
) -> None:
    """0.5 bought at 30000 (fee 15) and sold back at 29990 (fee 14.995): -34.995, past a 30 limit."""
    set_limits(daily_loss_limit=Decimal(30))

    with django_capture_on_commit_callbacks(execute=True):
        assert execution.execute_opportunity(one_sided.pk) == "failed"

    assert risk_controls.todays_pnls() == [Decimal("-34.995")]
    assert KillSwitch.objects.get().tripped
    summary = dict(rules.summary_message(timezone.now().date()).facts)
    assert summary["Realized PnL"] == "-35.00"


def test_a_filled_leg_whose_partner_is_being_retried_counts_against_the_exposure_cap(
    market: None, redis_client: redis.Redis
) -> None:
    opportunity = open_known_gap(redis_client)
    reserved_then_crashed(opportunity)
    legs = orders_by_key(opportunity)
    Order.objects.filter(pk=legs["buy"].pk).update(status=Order.Status.FILLED, filled=Decimal("0.5"))
    Order.objects.filter(pk=legs["sell"].pk).update(status=Order.Status.REJECTED)

    assert risk_controls.open_exposure("BTC") == {("alpha", "BTC"): Decimal("0.5")}


# --- the trade task before the record ------------------------------------------------------------


def test_a_listener_with_ids_in_hand_records_the_opportunity_under_the_id_its_task_carries(
    market: None, redis_client: redis.Redis
) -> None:
    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
    listener = Listener(redis_client)
    listener.load_strategy()
    listener.reserve()
    first = listener.reserved[-1]

    [opened] = tick(listener, redis_client, "alpha", "bravo")

    assert opened == first
    assert Opportunity.objects.get(pk=opened).status == Status.DISPATCHED
    assert listener.stats.dispatched == 1
    assert execution.execute_opportunity(opened) == "executed"


def record_waits() -> float:
    return REGISTRY.get_sample_value("arb_record_waits_total") or 0.0


@pytest.mark.django_db(transaction=True)
def test_a_trade_task_that_comes_before_its_opportunitys_row_waits_for_it_and_trades(
    market: None, redis_client: redis.Redis
) -> None:
    """The listener queues the task first and writes the row after: a worker that is quicker
    than the listener waits for the row instead of giving the trade up."""
    publish(redis_client, book("alpha", *CHEAP), book("bravo", *DEAR))
    [pk] = lifecycle.reserve_ids(1)
    waits_before = record_waits()
    outcome: list[str] = []

    def worker() -> None:
        try:
            outcome.append(execution.execute_opportunity(pk))
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    wait_until(lambda: record_waits() > waits_before, what="the task waiting for its row")
    listener = Listener(redis_client)
    listener.load_strategy()
    listener.reserved = [pk]
    tick(listener, redis_client, "alpha", "bravo")
    thread.join(timeout=60)

    assert outcome == ["executed"]
    assert Trade.objects.get(opportunity_id=pk).amount == Decimal("0.5")


def test_a_trade_task_whose_opportunity_is_never_recorded_trades_nothing(market: None, settings: Any) -> None:
    settings.RECORD_WAIT_MS = 50
    [pk] = lifecycle.reserve_ids(1)

    assert execution.execute_opportunity(pk) == "not_claimed"
    assert not Order.objects.exists()
    assert not Opportunity.objects.filter(pk=pk).exists()


# --- no path forgets a position -------------------------------------------------------------------


def test_a_task_whose_opportunity_another_worker_holds_sends_nothing_and_leaves_it_dispatched(
    market: None, redis_client: redis.Redis
) -> None:
    """The claim takes the opportunity's session lock in its own round trip: when another session
    holds it (another worker on the same opportunity), the claim is undone and nothing is sent."""
    opportunity = open_known_gap(redis_client)
    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [trade_store.ADVISORY_LOCKS, opportunity.pk])

        assert execution.execute_opportunity(opportunity.pk) == "not_claimed"
        assert Opportunity.objects.get(pk=opportunity.pk).status == Status.DISPATCHED
        assert not Order.objects.exists()

    assert execution.execute_opportunity(opportunity.pk) == "executed"


def test_a_worker_gone_mid_re_check_leaves_the_opportunity_dispatched_for_its_redelivered_task(
    market: None, redis_client: redis.Redis
) -> None:
    """The claim commits only with the orders (or the reason there are none): a worker that dies
    before leaves nothing half done, and its task, delivered again, trades."""
    opportunity = open_known_gap(redis_client)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        assert trade_store.claim(opportunity.pk)
        raise RuntimeError("the worker dies here")

    assert Opportunity.objects.get(pk=opportunity.pk).status == Status.DISPATCHED
    assert lifecycle.abandoned() == []
    assert execution.execute_opportunity(opportunity.pk) == "executed"


def test_a_dispatched_opportunity_whose_task_was_lost_expires(
    market: None, redis_client: redis.Redis
) -> None:
    opportunity = open_known_gap(redis_client)
    later = now_ms() + 3_600_000

    assert lifecycle.expire_lost(later) == 1

    opportunity.refresh_from_db()
    assert (opportunity.status, opportunity.reason) == (
        Status.EXPIRED,
        "ttl_exceeded: never taken up by a worker",
    )


@contextlib.contextmanager
def redis_stopped_when(server: PrivateRedis, condition: Callable[[Any], bool]) -> Iterator[None]:
    """Stop `server` as settlement records an order meeting `condition`, before it is sent."""
    record = settlement._record

    def recording(*args: Any) -> Order:
        order = record(*args)
        if condition(order):
            with contextlib.suppress(redis.ConnectionError):
                server.client.shutdown(nosave=True)
        return order

    settlement._record = recording  # type: ignore[assignment]
    try:
        yield
    finally:
        settlement._record = record  # type: ignore[assignment]


def test_a_hedge_that_meets_a_redis_restart_is_sent_again_once_redis_is_back(
    market: None, private_redis: PrivateRedis, settings
) -> None:
    settings.REDIS_URL = private_redis.url
    client = private_redis.client
    opportunity = open_known_gap(client)
    reserved_then_crashed(opportunity)
    publish(client, book("bravo", *FLAT))

    with (
        redis_stopped_when(private_redis, lambda order: order.role == Order.Role.HEDGE),
        pytest.raises(redis.ConnectionError),
    ):
        execution.execute_opportunity(opportunity.pk)

    opportunity.refresh_from_db()
    assert opportunity.status == Status.EXECUTING
    alert = Alert.objects.get(key=f"settlement_interrupted:{opportunity.pk}")
    assert "0.5 BTC on alpha" in alert.subject
    private_redis.start()
    publish(client, book("alpha", *CHEAP), book("bravo", *FLAT))  # the collectors publish again

    assert execution.execute_opportunity(opportunity.pk) == "failed"

    hedge = orders_by_key(opportunity)["hedge"]
    assert (hedge.status, hedge.filled) == ("filled", Decimal("0.5"))
    assert risk_controls.open_exposure("BTC") == {}
    assert all(locked == 0 for _, locked in ledger().values())


def test_a_trade_a_dead_worker_left_executing_is_found_by_the_sweep_and_completed(
    market: None, redis_client: redis.Redis
) -> None:
    opportunity = open_known_gap(redis_client)
    reserved_then_crashed(opportunity)

    assert lifecycle.abandoned() == [opportunity.pk]
    assert execution.execute_opportunity(opportunity.pk) == "executed"
    assert not Opportunity.objects.filter(status__in=lifecycle.IN_FLIGHT).exists()
