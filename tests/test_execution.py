"""Executing opportunities on paper: re-check, both legs, the record, idempotency, and the
same retries, hedges and resumption after a crash as live legs."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.conftest import client_id, next_message, orders_by_key
from tests.quotes import FLAT, book, open_known_gap, publish
from trading import execution
from trading.core.ledger import Charge
from trading.core.types import Side
from trading.models import Alert, Balance, Opportunity, Order, Trade, Venue
from trading.venues.base import OrderRequest
from trading.venues.paper import PaperGateway

pytestmark = pytest.mark.django_db


@pytest.fixture
def detected(market: None, redis_client) -> Opportunity:
    return open_known_gap(redis_client)


def balances() -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    return {(b.venue.name, b.asset): (b.free, b.locked) for b in Balance.objects.select_related("venue")}


def test_both_legs_fill_and_the_trade_records_the_hand_computed_pnl(
    detected: Opportunity, redis_client, names, django_capture_on_commit_callbacks
) -> None:
    events = redis_client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(names.trade_events)
    with django_capture_on_commit_callbacks(execute=True):
        assert execution.execute_opportunity(detected.pk) == "executed"

    trade = Trade.objects.get()
    # buy 0.5 at 30000 (fee 15), sell 0.5 at 30100 (fee 15.05): 50 - 30.05
    assert trade.realized_pnl == Decimal("19.95")
    assert trade.expected_pnl == Decimal("19.95")
    assert trade.fees == Decimal("30.05")
    legs = {o.side: o for o in Order.objects.all()}
    assert legs["buy"].client_order_id == client_id(detected, "buy")
    assert (legs["buy"].filled, legs["buy"].average_price) == (Decimal("0.5"), Decimal("30000"))
    assert (legs["sell"].filled, legs["sell"].average_price) == (Decimal("0.5"), Decimal("30100"))
    assert balances() == {
        ("alpha", "BTC"): (Decimal("0.5"), 0),
        ("alpha", "USDT"): (Decimal("84985"), 0),
        ("bravo", "BTC"): (Decimal("1.5"), 0),
        ("bravo", "USDT"): (Decimal("15034.95"), 0),
    }
    detected.refresh_from_db()
    assert detected.status == Opportunity.Status.EXECUTED
    event = next_message(events)
    assert event is not None
    assert Decimal(json.loads(event["data"])["realized_pnl"]) == Decimal("19.95")


def test_a_second_delivery_trades_nothing(detected: Opportunity) -> None:
    assert execution.execute_opportunity(detected.pk) == "executed"
    assert execution.execute_opportunity(detected.pk) == "not_claimed"
    assert Trade.objects.count() == 1
    assert Order.objects.count() == 2


def test_an_opportunity_past_its_ttl_expires_untraded(detected: Opportunity) -> None:
    Opportunity.objects.filter(pk=detected.pk).update(detected_at=timezone.now() - timedelta(minutes=5))
    assert execution.execute_opportunity(detected.pk) == "expired"
    detected.refresh_from_db()
    assert detected.reason.startswith("ttl_exceeded")
    assert not Order.objects.exists()


def test_a_gap_gone_by_execution_time_is_rejected(detected: Opportunity, redis_client) -> None:
    publish(redis_client, book("bravo", *FLAT))
    assert execution.execute_opportunity(detected.pk) == "rejected"
    detected.refresh_from_db()
    assert detected.reason == "no_longer_profitable: gap_closed"
    assert not Order.objects.exists()
    assert balances()[("alpha", "USDT")] == (Decimal("100000"), 0)


def test_balances_spent_elsewhere_are_rechecked(detected: Opportunity) -> None:
    Balance.objects.filter(venue__name="bravo", asset="BTC").update(free=0)
    assert execution.execute_opportunity(detected.pk) == "rejected"
    detected.refresh_from_db()
    assert detected.reason == "no_longer_profitable: insufficient_balance"


def test_paper_orders_fill_immediately_or_cancel_within_their_limit(redis_client) -> None:
    quote = book("alpha", [("99", "1")], [("100", "1"), ("101", "2"), ("103", "5")], seq=7)
    gateway = PaperGateway("alpha", Decimal("0.001"), lambda symbol: quote, redis_client)
    request = OrderRequest("BTC/USDT", Side.BUY, Decimal("5"), Decimal("101"), "c1")

    result = asyncio.run(gateway.create_order(request))

    assert (result.status, result.filled) == ("partial", Decimal("3"))
    assert result.average_price == Decimal("302") / 3
    assert result.charges == (Charge("USDT", Decimal("0.302")),)
    assert asyncio.run(gateway.create_order(request)) == result  # same client order id: no second fill
    assert asyncio.run(gateway.fetch_order("c1", "BTC/USDT")) == result


def test_paper_orders_on_one_snapshot_never_fill_a_level_twice(redis_client) -> None:
    """Three buys of 0.05 on one book whose best ask offers 0.08: the second gets the 0.03 left
    there and 0.02 of the next level, the third only the next level."""
    quote = book("bravo", [("29990", "1")], [("30000", "0.08"), ("30010", "1")], seq=3)
    gateway = PaperGateway("bravo", Decimal("0.001"), lambda symbol: quote, redis_client)

    fills = [
        asyncio.run(
            gateway.create_order(OrderRequest("BTC/USDT", Side.BUY, Decimal("0.05"), Decimal("30010"), cid))
        )
        for cid in ("one", "two", "three")
    ]

    assert [result.average_price for result in fills] == [Decimal(30000), Decimal(30004), Decimal(30010)]


def reserved_then_crashed(opportunity: Opportunity) -> None:
    """What a worker killed after recording the orders leaves: both orders recorded, funds
    reserved, nothing filled, the opportunity still executing."""
    assert isinstance(execution.claim_and_record(opportunity.pk), execution.Plan)


def test_a_paper_trade_left_executing_by_a_dead_worker_is_completed_on_redelivery(
    detected: Opportunity, redis_client
) -> None:
    reserved_then_crashed(detected)
    assert balances()[("alpha", "USDT")] == (Decimal("84985"), Decimal("15015"))

    assert execution.execute_opportunity(detected.pk) == "executed"

    assert Trade.objects.get().realized_pnl == Decimal("19.95")
    assert Order.objects.count() == 2
    assert balances() == {
        ("alpha", "BTC"): (Decimal("0.5"), 0),
        ("alpha", "USDT"): (Decimal("84985"), 0),
        ("bravo", "BTC"): (Decimal("1.5"), 0),
        ("bravo", "USDT"): (Decimal("15034.95"), 0),
    }
    assert execution.execute_opportunity(detected.pk) == "not_claimed"


def test_a_paper_leg_that_cannot_fill_is_retried_then_the_other_is_hedged_back(
    detected: Opportunity, redis_client
) -> None:
    reserved_then_crashed(detected)
    publish(redis_client, book("bravo", *FLAT))  # bravo's bid falls below the sell's guard price

    assert execution.execute_opportunity(detected.pk) == "failed"

    detected.refresh_from_db()
    assert detected.reason == "leg failure: bought 0.5, sold 0, hedged 0.5"
    orders = orders_by_key(detected)
    assert sorted(orders) == ["buy", "hedge", "sell", "sell-r1", "sell-r2"]
    assert [orders[k].filled for k in ("sell", "sell-r1", "sell-r2")] == [0, 0, 0]
    # the 0.5 BTC bought at 30000 is sold back on alpha at its bid, 29990; 0.1% fee both ways
    assert (orders["hedge"].side, orders["hedge"].filled) == ("sell", Decimal("0.5"))
    assert orders["hedge"].average_price == Decimal("29990")
    assert balances() == {
        ("alpha", "BTC"): (0, 0),
        ("alpha", "USDT"): (Decimal("99965.005"), 0),
        ("bravo", "BTC"): (Decimal("2"), 0),
        ("bravo", "USDT"): (0, 0),
    }
    # the failure's cash flow is recorded as what it is: 15,015 paid, 14,980.005 got back
    loss = Trade.objects.get()
    assert (loss.outcome, loss.amount, loss.realized_pnl) == ("hedged", 0, Decimal("-34.995"))
    assert set(Alert.objects.values_list("key", flat=True)) == {
        f"leg_retry:{detected.pk}",
        f"leg_hedge:{detected.pk}",
    }


def test_what_a_leg_held_back_is_given_back_exactly_though_the_fee_changed_meanwhile(
    detected: Opportunity, redis_client
) -> None:
    """Held at 0.1% (15,015 USDT for 0.5 BTC at 30,000); by the fill the venue charges 0.2%."""
    reserved_then_crashed(detected)
    Venue.objects.filter(name="alpha").update(taker_fee=Decimal("0.002"))

    assert execution.execute_opportunity(detected.pk) == "executed"

    assert balances()[("alpha", "USDT")] == (Decimal("84970"), 0)  # 100,000 - 15,000 - 30 fee
    assert all(locked == 0 for _, locked in balances().values())
