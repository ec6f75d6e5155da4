"""Live execution against the exchange emulator: the real ccxt client signs and sends both legs,
fills are confirmed by polling, a failing leg is retried then hedged, a venue that stops
answering leaves the trade in flight and alerted until it is resumed, and a worker killed
between the legs trades each leg exactly once after redelivery."""

from __future__ import annotations

import base64
import logging
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from django.db import OperationalError, connection

from devtools.emulator import Emulator, emulate
from tests.conftest import (
    child_env,
    client_id,
    emulated_venues,
    fund,
    make_strategy,
    orders_by_key,
    start_worker,
)
from tests.deadlines import wait_until
from tests.quotes import book, publish
from trading import accounts, execution, legs, pubsub, reconcile, risk_controls, settlement
from trading.clock import now_ms
from trading.listener import Listener
from trading.mode import announce_trading_mode
from trading.models import Alert, Balance, Deployment, Opportunity, Order, StrategyConfig, Trade, Venue
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
    for name, value in live_env().items():
        monkeypatch.setenv(name, value)
    settings.TRADING_MODE = "live"
    settings.LIVE_RATE_LIMITED = False
    settings.LEG_FILL_DEADLINE_MS = 1500
    for name, venue in emulated_venues(emulator).items():
        fund(venue, **FUNDS[name])
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"), ttl_ms=60_000)
    accounts.refresh_all()  # as every worker does when it starts: fee tiers and market rules recorded
    return emulator


def open_gap(client) -> Opportunity:
    publish(client, book("binance", *CHEAP), book("kraken", *DEAR))
    listener = Listener(client)
    listener.load_strategy()
    for quote in pubsub.latest_books(client, "BTC/USDT").values():
        listener.on_price(pubsub.encode_quote(quote), now_ms())
    return Opportunity.objects.latest("pk")


orders = orders_by_key


@pytest.mark.django_db
def test_a_venue_without_keys_only_quotes_and_is_never_a_leg_while_the_others_trade_live(
    live: Emulator, redis_client, monkeypatch, caplog
) -> None:
    monkeypatch.delenv("ARB_KRAKEN_API_SECRET")

    assert announce_trading_mode() == "live"
    assert "quote-only for lack of keys: kraken" in caplog.text
    assert "ARB_KRAKEN_API_SECRET" in caplog.text
    assert KEYS["kraken"] not in caplog.text
    publish(redis_client, book("binance", *CHEAP), book("kraken", *DEAR))
    listener = Listener(redis_client)
    listener.load_strategy()
    for quote in pubsub.latest_books(redis_client, "BTC/USDT").values():
        listener.on_price(pubsub.encode_quote(quote), now_ms())
    assert not Opportunity.objects.exists()  # kraken's bid is a price, not a leg


@pytest.mark.django_db
def test_the_mode_an_opportunity_was_decided_in_is_the_mode_it_is_executed_in(
    live: Emulator, redis_client, settings
) -> None:
    opportunity = open_gap(redis_client)
    settings.TRADING_MODE = "paper"  # the setting changes; the decided opportunity stays live

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    assert Trade.objects.get().mode == "live"
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}


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
    lower). With 5 bps of allowance the sell's limit is 60169.90, and it fills at 60190. (At both
    limits, 60030 and 60169.90, the trade still nets 3.3 bps: over a 2 bps bar.)"""
    StrategyConfig.objects.filter(active=True).update(slippage_bps=5, min_profit_bps=2)
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
    """The record says 0.1% on kraken, so the listener sees 39.9 USDT in the gap; kraken now
    charges this account 0.26%, which makes it a loss of 8.26. The accounts' refresh records the
    new tier before the worker re-checks: nothing may be sent."""
    opportunity = open_gap(redis_client)
    live.set_taker_fee("kraken", "0.0026")
    accounts.refresh_all()

    assert execution.execute_opportunity(opportunity.pk) == "rejected"

    opportunity.refresh_from_db()
    assert opportunity.reason.startswith("no_longer_profitable")
    assert not Order.objects.exists()
    assert Venue.objects.get(name="kraken").taker_fee == Decimal("0.0026")


@pytest.mark.django_db
def test_a_cheaper_fee_tier_is_what_the_trade_expects_and_pays(live: Emulator, redis_client) -> None:
    live.set_taker_fee("kraken", "0.0005")
    accounts.refresh_all()
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
    assert risk_controls.open_exposure("BTC") == {}
    # the loss is realized PnL: 30,030 paid, 29,960.005 got back
    assert Trade.objects.get().realized_pnl == Decimal("-64.995")
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
    risk_controls.trip("by hand", by="ops")
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
    plan = execution.claim_and_record(opportunity.pk)
    assert isinstance(plan, execution.Plan)
    request = settlement.as_request(plan.buy)
    legs.run_on(plan.buy.venue, "live", lambda gw: legs.confirmed(gw, request, look_first=False))

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    # one buy and one sell of 0.5, not two: a second buy would have left 1 BTC on binance
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert Trade.objects.get().amount == Decimal("0.5")
    assert execution.execute_opportunity(opportunity.pk) == "not_claimed"


@pytest.mark.django_db
@pytest.mark.parametrize("fault", [{"status": 429}, {"delay_s": 1.5}], ids=["429", "timeout"])
def test_a_venue_that_stops_answering_leaves_the_trade_in_flight_alerted_then_resumed(
    live: Emulator, redis_client, settings, fault: dict
) -> None:
    """Nothing is read from the venues before the orders go out. Kraken stops answering as they
    do: what became of the sell is unknown, so the trade stays executing with an alert naming
    what is at stake. Once kraken answers, the resumed trade learns the truth and completes."""
    settings.COLLECT_TIMEOUT_MS = 1000
    ccxt_gateway._markets.clear()
    opportunity = open_gap(redis_client)
    live.set_fault("kraken", **fault)

    with pytest.raises(Exception, match="kraken"):
        execution.execute_opportunity(opportunity.pk)

    opportunity.refresh_from_db()
    assert opportunity.status == Opportunity.Status.EXECUTING
    alert = Alert.objects.get(key=f"settlement_interrupted:{opportunity.pk}")
    assert "0.5 BTC on binance" in alert.subject
    live.clear_fault("kraken")

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert Trade.objects.get().amount == Decimal("0.5")


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
    assert "resuming it" in replacement.output()
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
    buy = client_id(opportunity, "buy")
    Order.objects.filter(client_order_id=buy).update(status="open", filled=0)
    differences = {difference.key for difference in reconcile.reconcile_all()}

    assert differences == {f"reconcile_order:{buy}", "reconcile_balance:kraken:BTC"}
    assert set(Alert.objects.filter(resolved_at__isnull=True).values_list("key", flat=True)) == differences


# --- fees as the venues charge them ---------------------------------------------------------------


def venue_balances_recorded(venue: str) -> dict[str, Decimal]:
    return {
        b.asset: b.free + b.locked for b in Balance.objects.filter(venue__name=venue) if b.free + b.locked
    }


@pytest.mark.django_db
def test_a_buy_whose_fee_binance_takes_from_the_base_is_booked_as_binance_books_it(
    live: Emulator, redis_client
) -> None:
    """Binance keeps 0.1% of the 0.5 BTC bought: 0.4995 arrives. The ledger says the same, the
    trade's base flow is the 0.0005 BTC, and its PnL values that at binance's mid (59995)."""
    live.add_account("binance", KEYS["binance"], SECRETS["binance"], FUNDS["binance"], fee_asset="received")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.4995"), "USDT": Decimal("70000")}
    assert venue_balances_recorded("binance") == {"BTC": Decimal("0.4995"), "USDT": Decimal("70000")}
    trade = Trade.objects.get()
    assert (trade.base_flow, trade.quote_flow, trade.mark_price) == (
        Decimal("-0.0005"),
        Decimal("69.9"),
        Decimal("59995"),
    )
    assert trade.realized_pnl == Decimal("69.9") - Decimal("0.0005") * Decimal("59995")
    assert reconcile.reconcile_all() == []


@pytest.mark.django_db
def test_a_fee_paid_in_bnb_is_debited_in_bnb_and_valued_at_its_market(live: Emulator, redis_client) -> None:
    live.add_account(
        "binance", KEYS["binance"], SECRETS["binance"], {**FUNDS["binance"], "BNB": "1"}, fee_asset="BNB"
    )
    live.set_fee_price("binance", "BNB/USDT", "600")
    fund(Venue.objects.get(name="binance"), BNB="1")
    publish(redis_client, book("binance", [("599.5", "10")], [("600.5", "10")], symbol="BNB/USDT"))
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    # binance's 30 USDT of fee is 0.05 BNB; kraken's 30.1 is in USDT
    assert live.balances("binance", KEYS["binance"])["BNB"] == Decimal("0.95")
    assert venue_balances_recorded("binance")["BNB"] == Decimal("0.95")
    assert orders()["buy"].fee == Decimal("30")
    trade = Trade.objects.get()
    assert (trade.other_flows, trade.unvalued) == ({"BNB": "-0.05"}, "")
    assert trade.realized_pnl == Decimal("39.9")


@pytest.mark.django_db
def test_a_fee_in_an_asset_without_a_price_is_named_and_alerted_never_counted_as_zero(
    live: Emulator, redis_client
) -> None:
    live.add_account(
        "binance", KEYS["binance"], SECRETS["binance"], {**FUNDS["binance"], "BNB": "1"}, fee_asset="BNB"
    )
    live.set_fee_price("binance", "BNB/USDT", "600")
    fund(Venue.objects.get(name="binance"), BNB="1")
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    buy = orders()["buy"]
    assert (buy.fee, buy.fees) == (None, [["BNB", "0.05"]])
    assert Alert.objects.filter(key=f"fee_unknown:{buy.client_order_id}", resolved_at__isnull=True).exists()
    trade = Trade.objects.get()
    assert (trade.unvalued, trade.realized_pnl) == ("BNB", Decimal("69.9"))  # 0.05 BNB left out, and said


# --- client order ids for the life of an account --------------------------------------------------


@pytest.mark.django_db
def test_after_a_database_reset_a_resumed_trade_never_adopts_an_old_order_as_its_own(
    live: Emulator, redis_client
) -> None:
    """The venue still holds the orders of opportunity N from before the reset. After it the
    database numbers opportunities from N again, but under a new deployment key: the resumed trade
    finds nothing of its own there and trades, instead of taking the old fills for its own."""
    first = open_gap(redis_client)
    assert execution.execute_opportunity(first.pk) == "executed"
    old_ids = {order.client_order_id for order in Order.objects.all()}
    Trade.objects.all().delete()
    Order.objects.all().delete()
    Opportunity.objects.all().delete()
    Deployment.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('trading_opportunity', 'id'), %s, false)", [first.pk]
        )
    for name in ("binance", "kraken"):
        Balance.objects.filter(venue__name=name).delete()
        fund(Venue.objects.get(name=name), **{a: str(v) for a, v in live.balances(name, KEYS[name]).items()})

    again = open_gap(redis_client)
    assert again.pk == first.pk
    assert isinstance(execution.claim_and_record(again.pk), execution.Plan)
    assert execution.execute_opportunity(again.pk) == "executed"  # resumed: looked up first

    assert old_ids.isdisjoint(order.client_order_id for order in Order.objects.all())
    assert live.balances("binance", KEYS["binance"])["BTC"] == Decimal("1")  # two buys of 0.5, not one


# --- cancels that take a while --------------------------------------------------------------------


@pytest.mark.django_db
def test_a_cancel_still_pending_is_read_until_the_venue_says_the_order_is_done(
    live: Emulator, redis_client
) -> None:
    """Kraken leaves the sell open until it is cancelled at the deadline, reads it as still open
    twice after the cancel, then as filled (it matched before the cancel took): recorded filled."""
    live.set_fault("kraken", fill_after_cancel=True, cancel_pending_reads=2)
    opportunity = open_gap(redis_client)

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    sell = orders()["sell"]
    assert (sell.status, sell.filled) == ("filled", Decimal("0.5"))
    assert live.balances("kraken", KEYS["kraken"]) == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}
    assert venue_balances_recorded("kraken") == {"BTC": Decimal("1.5"), "USDT": Decimal("30069.9")}


# --- a database error while the fills are recorded ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fills_a_database_error_kept_from_the_record_are_found_on_the_venue_when_resumed(
    live: Emulator, redis_client
) -> None:
    """Another session holds the orders' rows as the fills come back, and recording them gives up
    (a real PostgreSQL lock timeout): the venue filled both legs, the record still says new and
    holds their funds. The trade stays executing with an alert, and its resumption records what
    the venue says, releasing the funds."""
    opportunity = open_gap(redis_client)
    assert isinstance(execution.claim_and_record(opportunity.pk), execution.Plan)
    db = settings_db()
    with psycopg.connect(**db) as blocker, blocker.transaction():
        blocker.execute("SELECT id FROM trading_order WHERE opportunity_id = %s FOR UPDATE", [opportunity.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '300ms'")
        try:
            with pytest.raises(OperationalError, match="lock timeout"):
                execution.execute_opportunity(opportunity.pk)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")

    assert live.balances("binance", KEYS["binance"]) == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert {order.status for order in Order.objects.all()} == {"new"}
    assert Opportunity.objects.get().status == Opportunity.Status.EXECUTING
    assert Alert.objects.filter(key=f"settlement_interrupted:{opportunity.pk}").exists()

    assert execution.execute_opportunity(opportunity.pk) == "executed"

    assert {key: o.status for key, o in orders().items()} == {"buy": "filled", "sell": "filled"}
    assert venue_balances_recorded("binance") == {"BTC": Decimal("0.5"), "USDT": Decimal("69970")}
    assert all(b.locked == 0 for b in Balance.objects.all())
    assert Trade.objects.get().realized_pnl == Decimal("39.9")


def settings_db() -> dict[str, object]:
    db = connection.settings_dict
    return {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "dbname": db["NAME"],
        "autocommit": True,
    }
