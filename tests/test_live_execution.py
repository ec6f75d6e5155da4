"""Live execution against the exchange emulator: the real ccxt client signs and sends both legs,
fills are confirmed by polling, a failing leg is retried then hedged, and a worker killed
between the legs trades each leg exactly once after redelivery."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.conftest import child_env, emulated_venues, fund, make_strategy, start_worker
from tests.deadlines import wait_until
from tests.quotes import book, publish
from trading import execution, legs, pubsub, reconcile, risk, settlement
from trading.config import announce_trading_mode, now_ms, trading_mode
from trading.emulator import Emulator, emulate
from trading.listener import Listener
from trading.models import Alert, Balance, Opportunity, Order, StrategyConfig, Trade, Venue
from trading.venues import ccxt_gateway

KEYS = {"binance": "live-binance-key-81f2", "kraken": "live-kraken-key-44c9"}
SECRETS = {
    "binance": "live-binance-secret-0a9d",
    "kraken": base64.b64encode(b"live-kraken-secret-6e").decode(),
}
# binance sells at 60000, kraken buys at 60200: 0.5 BTC makes 100 USDT before fees.
CHEAP = [("59990", "1")], [("60000", "1")]
DEAR = [("60200", "1")], [("60210", "1")]
FUNDS = {"binance": {"BTC": "0", "USDT": "100000"}, "kraken": {"BTC": "2", "USDT": "0"}}
VISIBILITY_TIMEOUT_S = 2


def live_env() -> dict[str, str]:
    env = {"TRADING_MODE": "live", "LIVE_RATE_LIMITED": "0", "LEG_FILL_DEADLINE_MS": "1500"}
    for venue in KEYS:
        env[f"ARB_{venue.upper()}_API_KEY"] = KEYS[venue]
        env[f"ARB_{venue.upper()}_API_SECRET"] = SECRETS[venue]
    return env


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate("binance", "kraken") as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    for venue, (bids, asks) in (("binance", CHEAP), ("kraken", DEAR)):
        running_emulator.set_book(venue, "BTC/USDT", bids, asks)
        running_emulator.set_taker_fee(venue, "0.001")
        running_emulator.add_account(venue, KEYS[venue], SECRETS[venue], FUNDS[venue])
    yield running_emulator
    running_emulator.reset()


@pytest.fixture
def live(emulator: Emulator, settings, monkeypatch) -> Emulator:
    """Both emulated venues funded in the record as on the venue, keys in the environment, live;
    no fee tier remembered from another test."""
    monkeypatch.setattr(ccxt_gateway, "_fee_tiers", {})
    for name, value in live_env().items():
        monkeypatch.setenv(name, value)
    settings.TRADING_MODE = "live"
    settings.LIVE_RATE_LIMITED = False
    settings.LEG_FILL_DEADLINE_MS = 1500
    for name, venue in emulated_venues(emulator).items():
        fund(venue, **FUNDS[name])
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"), ttl_ms=60_000)
    return emulator


def open_gap(client) -> Opportunity:
    publish(client, book("binance", *CHEAP), book("kraken", *DEAR))
    listener = Listener(client)
    listener.load_strategy()
    for quote in pubsub.latest_books(client, "BTC/USDT").values():
        listener.on_price(pubsub.encode_quote(quote), now_ms())
    return Opportunity.objects.latest("pk")


def orders() -> dict[str, Order]:
    return {order.client_order_id.split("-", 1)[1]: order for order in Order.objects.all()}


@pytest.mark.django_db
def test_live_needs_keys_for_every_enabled_ccxt_venue_and_says_which_are_missing(
    live: Emulator, monkeypatch, caplog
) -> None:
    assert announce_trading_mode() == "live"
    monkeypatch.delenv("ARB_KRAKEN_API_SECRET")

    assert announce_trading_mode() == "paper"
    assert trading_mode() == "paper"
    assert "ARB_KRAKEN_API_SECRET" in caplog.text
    assert "trading on PAPER" in caplog.text
    assert KEYS["kraken"] not in caplog.text


@pytest.mark.django_db
def test_both_legs_fill_on_the_venues_and_the_trade_is_recorded(live: Emulator, redis_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    trade = Trade.objects.get()
    # buy 0.5 at 60000 (fee 30), sell 0.5 at 60200 (fee 30.1)
    assert (trade.mode, trade.amount, trade.realized_pnl) == ("live", Decimal("0.5"), Decimal("39.9"))
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert {key: o.status for key, o in orders().items()} == {"buy": "filled", "sell": "filled"}
    logged = caplog.text
    assert all(secret not in logged for secret in (*KEYS.values(), *SECRETS.values()))


@pytest.mark.django_db
def test_a_book_that_moves_before_the_order_lands_is_caught_within_the_slippage_allowance(
    live: Emulator, redis_client
) -> None:
    """The collected kraken bid is 60200; by the time the sell lands kraken bids 60190 (1.7 bps
    lower). With 5 bps of allowance the sell's limit is 60169.90, and it fills at 60190."""
    StrategyConfig.objects.filter(active=True).update(slippage_bps=5)
    opportunity = open_gap(redis_client)
    live.set_book("kraken", "BTC/USDT", [("60190", "1")], DEAR[1])

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    sell = orders()["sell"]
    assert (sell.price, sell.filled, sell.average_price) == (
        Decimal("60169.9"),
        Decimal("0.5"),
        Decimal("60190"),
    )
    # 0.5 bought at 60000 (fee 30), sold at 60190 (fee 30.095): 5 USDT under the 39.9 expected
    trade = Trade.objects.get()
    assert (trade.expected_pnl, trade.realized_pnl) == (Decimal("39.9"), Decimal("34.905"))


@pytest.mark.django_db
def test_without_a_slippage_allowance_a_moved_book_leaves_the_leg_unfilled_and_hedged(
    live: Emulator, redis_client
) -> None:
    opportunity = open_gap(redis_client)
    live.set_book("kraken", "BTC/USDT", [("60190", "1")], DEAR[1])

    assert execution.execute_opportunity(opportunity.pk) == "failed"

    assert [o.filled for key, o in sorted(orders().items()) if key.startswith("sell")] == [0, 0, 0]
    assert orders()["hedge"].filled == Decimal("0.5")


@pytest.mark.django_db
def test_a_costlier_fee_tier_on_the_venue_stops_a_trade_the_recorded_fee_would_take(
    live: Emulator, redis_client
) -> None:
    """The record says 0.1% on kraken, so the listener sees 39.9 USDT in the gap; kraken charges
    this account 0.26%, which makes it a loss of 8.26: nothing may be sent."""
    live.set_taker_fee("kraken", "0.0026")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "rejected"

    opportunity.refresh_from_db()
    assert opportunity.reason.startswith("no_longer_profitable")
    assert not Order.objects.exists()
    assert Venue.objects.get(name="kraken").taker_fee == Decimal("0.0026")


@pytest.mark.django_db
def test_a_cheaper_fee_tier_is_what_the_trade_expects_and_pays(live: Emulator, redis_client) -> None:
    live.set_taker_fee("kraken", "0.0005")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    trade = Trade.objects.get()
    # buy 0.5 at 60000 (fee 30), sell 0.5 at 60200 (fee 15.05): as expected, so as paid
    assert (trade.expected_pnl, trade.realized_pnl) == (Decimal("54.95"), Decimal("54.95"))
    assert Venue.objects.get(name="kraken").taker_fee == Decimal("0.0005")


@pytest.mark.django_db
def test_rejected_leg_is_retried_then_the_filled_leg_is_hedged_back(live: Emulator, redis_client) -> None:
    live.set_fault("kraken", reject="market closed")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "failed"

    legs = {key: (o.side, o.status, o.filled) for key, o in orders().items()}
    assert legs == {
        "buy": ("buy", "filled", Decimal("0.5")),
        "sell": ("sell", "rejected", 0),
        "sell-r1": ("sell", "rejected", 0),
        "sell-r2": ("sell", "rejected", 0),
        "hedge": ("sell", "filled", Decimal("0.5")),
    }
    # bought 0.5 at 60000 and sold it back at 59990, 0.1% fee each way: flat BTC, nothing open
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0"), "USDT": Decimal("99935.005")}
    assert risk.open_exposure("BTC") == {}
    assert not Trade.objects.exists()
    assert set(Alert.objects.values_list("key", "severity")) == {
        (f"leg_retry:{opportunity.pk}", "warning"),
        (f"leg_hedge:{opportunity.pk}", "warning"),
    }


@pytest.mark.django_db
def test_partial_fills_are_retried_and_what_stays_one_sided_is_hedged(live: Emulator, redis_client) -> None:
    live.set_fault("kraken", fill_fraction="0.4")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "failed"

    sells = {key: o.filled for key, o in orders().items() if key.startswith("sell")}
    # each attempt fills 40% of what it asks: 0.2 of 0.5, then 0.12 of 0.3, then 0.072 of 0.18
    assert sells == {"sell": Decimal("0.2"), "sell-r1": Decimal("0.12"), "sell-r2": Decimal("0.072")}
    assert orders()["hedge"].filled == Decimal("0.108")
    assert live.balances("binance", KEYS["binance"])["BTC"] == Decimal("0.392")
    assert live.balances("kraken", KEYS["kraken"])["BTC"] == Decimal("1.608")
    # across the two venues the position is flat: 0.392 moved from kraken to binance
    bought = sum(o.filled for o in Order.objects.filter(side="buy"))
    assert bought == sum(o.filled for o in Order.objects.filter(side="sell"))


@pytest.mark.django_db
def test_the_kill_switch_stops_the_next_live_trade_before_any_order(live: Emulator, redis_client) -> None:
    risk.trip("by hand", by="ops")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "rejected"

    assert not Order.objects.exists()
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0"), "USDT": Decimal("100000")}


@pytest.mark.django_db
def test_redelivery_after_a_crash_between_the_legs_sends_each_leg_exactly_once(
    live: Emulator, redis_client
) -> None:
    """The state a worker killed between the legs leaves: both orders recorded, the buy placed on
    its venue, the sell never sent, the opportunity still executing."""
    opportunity = open_gap(redis_client)
    claimed = execution.claim(opportunity.pk)
    assert claimed is not None
    books = pubsub.latest_books(redis_client, "BTC/USDT")
    facts = asyncio.run(execution._venue_facts(claimed))
    plan = execution._recheck_and_reserve(claimed, claimed.strategy, books, now_ms(), facts)
    assert isinstance(plan, execution.Plan)
    asyncio.run(
        legs.on_venue(
            plan.buy.venue,
            "live",
            lambda gw: legs.confirmed(gw, settlement.as_request(plan.buy), look_first=False),
        )
    )

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    # one buy and one sell of 0.5, not two: a second buy would have left 1 BTC on binance
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert Trade.objects.get().amount == Decimal("0.5")
    assert execution.execute_opportunity(opportunity.pk) == "not_claimed"


@pytest.mark.django_db
@pytest.mark.parametrize("fault", [{"status": 429}, {"delay_s": 1.5}], ids=["429", "timeout"])
def test_a_venue_failing_before_the_orders_stops_the_trade_with_nothing_sent(
    live: Emulator, redis_client, settings, fault: dict
) -> None:
    settings.COLLECT_TIMEOUT_MS = 1000
    live.set_fault("kraken", **fault)
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "rejected"

    opportunity.refresh_from_db()
    assert opportunity.reason.startswith("venue_unavailable: kraken")
    assert not Order.objects.exists()
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0"), "USDT": Decimal("100000")}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_killed_between_the_legs_then_redelivery_trades_each_leg_exactly_once(
    live: Emulator, redis_client, spawn
) -> None:
    env = child_env(**live_env(), CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S))
    worker = start_worker(spawn, env=env)
    live.set_fault("kraken", delay_s=2.0)  # the sell leg is slow: the gap between the legs
    sells_before = live.request_count("kraken", "/0/private/AddOrder")
    opportunity = open_gap(redis_client)

    wait_until(
        lambda: (
            live.balances("binance", KEYS["binance"])["BTC"] == Decimal("0.5")
            and live.request_count("kraken", "/0/private/AddOrder") > sells_before
        ),
        timeout=30,
        what="buy filled and sell on its way",
    )
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    redelivered_from = time.monotonic() + VISIBILITY_TIMEOUT_S
    assert Opportunity.objects.get(pk=opportunity.pk).status == Opportunity.Status.EXECUTING
    wait_until(
        lambda: live.balances("kraken", KEYS["kraken"])["BTC"] == Decimal("1.5"),
        what="the sell the dead worker sent filled",
    )
    # The broker hands the task to another worker only once its visibility timeout has passed.
    time.sleep(max(0.0, redelivered_from - time.monotonic()))
    live.clear_fault("kraken")
    replacement = start_worker(spawn, env=env)

    wait_until(
        lambda: Opportunity.objects.get(pk=opportunity.pk).status == Opportunity.Status.EXECUTED,
        timeout=30,
        what="the redelivered task finishing the trade",
    )
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert Trade.objects.get().amount == Decimal("0.5")
    assert "resuming its legs" in replacement.output()
    logged = worker.output() + replacement.output()
    assert all(secret not in logged for secret in (*KEYS.values(), *SECRETS.values()))


@pytest.mark.django_db
def test_reconciliation_finds_nothing_after_a_trade_and_alerts_on_what_the_venue_disagrees_with(
    live: Emulator, redis_client
) -> None:
    opportunity = open_gap(redis_client)
    assert execution.execute_opportunity(opportunity.pk) == "executed"
    assert reconcile.reconcile_all() == []

    # the record drifts from the venues: a balance and an order's fill
    Balance.objects.filter(venue__name="kraken", asset="BTC").update(free=Decimal("1.6"))
    Order.objects.filter(client_order_id=f"arb{opportunity.pk}-buy").update(status="open", filled=0)
    differences = {difference.key for difference in reconcile.reconcile_all()}

    assert differences == {f"reconcile_order:arb{opportunity.pk}-buy", "reconcile_balance:kraken:BTC"}
    assert set(Alert.objects.filter(resolved_at__isnull=True).values_list("key", flat=True)) == differences
