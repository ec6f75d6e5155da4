"""The money rules, as properties of random runs on paper: random books on three venues, the
listener opening opportunities that share them, trades executed with a failure injected at any
step of execution and settlement (an error, a database error, a lost Redis, a soft time limit, or
the process killed outright), Redis restarts, database sessions killed, and the resume sweep.

After every step, and once everything is resumed: what the record says each order filled is what
the paper venue filled, the ledger is the venue's balances, realized PnL is the change in holdings
valued at the mark, no level of a book snapshot is filled twice, exposure over its cap is named in
an open alert, and every opportunity is final or resumable.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from billiard.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError, close_old_connections, connection
from hypothesis import HealthCheck, event
from hypothesis import settings as run_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import PrivateRedis, fund, make_strategy, make_venue
from tests.quotes import book, publish
from trading import balances, book_claims, execution, legs, lifecycle, pubsub, risk, settlement, trade_store
from trading.config import now_ms
from trading.core import ledger
from trading.core.types import Side, split_symbol
from trading.listener import Listener
from trading.models import Alert, Balance, Opportunity, Order, RiskLimits, Trade, Venue
from trading.venues.base import OrderResult

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = Opportunity.Status
VENUES = ("alpha", "bravo", "charlie")
FUNDS = {"BTC": Decimal(5), "USDT": Decimal(150_000)}
EXPOSURE_CAP = Decimal(20_000)
MID = Decimal(30_000)


class Killed(BaseException):
    """The process died here (a hard time limit, a kill): nothing after it runs, not even the
    handlers that record an interruption."""


FAULTS: dict[str, Callable[[], BaseException]] = {
    "error": lambda: RuntimeError("injected fault"),
    "database": lambda: OperationalError("injected: the database went away"),
    "redis": lambda: redis.ConnectionError("injected: Redis went away"),
    "soft time limit": lambda: SoftTimeLimitExceeded(),
    "killed": lambda: Killed(),
}
# Where a fault can strike: (module, function) looked up at call time on the trade path.
STEPS = {
    "claim": (trade_store, "claim"),
    "balance locks": (trade_store, "lock_balances"),
    "limits": (trade_store, "guards"),
    "liquidity": (book_claims, "transact"),
    "orders recorded": (trade_store, "insert"),
    "funds held": (trade_store, "hold"),
    "sending": (legs, "run"),
    "recording an answer": (settlement, "_save"),
    "a retry or hedge": (settlement, "_record"),
    "ledger": (balances, "apply"),
    "cash flow": (settlement, "record_cash_flow"),
    "finish": (settlement, "finish"),
    "daily loss": (risk, "enforce_daily_loss"),
}


@contextlib.contextmanager
def fault_at(step: str, fault: str, after_calls: int) -> Iterator[None]:
    """Make `step` raise `fault` on its call number `after_calls` (0: the first), once."""
    module, name = STEPS[step]
    original = getattr(module, name)
    calls = [0]

    def faulty(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == after_calls + 1:
            raise FAULTS[fault]()
        return original(*args, **kwargs)

    setattr(module, name, faulty)
    try:
        yield
    finally:
        setattr(module, name, original)


class MoneyRules(RuleBasedStateMachine):
    server: PrivateRedis  # set by the test

    def __init__(self) -> None:
        super().__init__()
        for model in (Trade, Order, Alert, Opportunity, Balance):
            model.objects.all().delete()
        self.server.client.flushall()
        self.client = self.server.client
        for venue in Venue.objects.all():
            fund(venue, **{asset: str(amount) for asset, amount in FUNDS.items()})
        RiskLimits.current()
        RiskLimits.objects.filter(pk=1).update(max_open_exposure=EXPOSURE_CAP, daily_loss_limit=10**9)
        self.listener = Listener(self.client)
        self.listener.load_strategy()
        self.books: dict[tuple[str, int], dict[tuple[str, Decimal], Decimal]] = {}
        self.restarts = 0

    # --- the market and the listener ------------------------------------------------------------

    @rule(
        offsets=st.lists(st.integers(-6, 6), min_size=len(VENUES), max_size=len(VENUES)),
        sizes=st.lists(st.sampled_from(["0.05", "0.1", "0.2", "0.5"]), min_size=1, max_size=3),
    )
    def publish_books(self, offsets: list[int], sizes: list[str]) -> None:
        """A book of every venue around 30,000 (levels 10 apart, each venue's best bid its offset
        x 10 off the mid), each taken by the listener as it arrives."""
        for venue, offset in zip(VENUES, offsets, strict=True):
            best_bid = MID + offset * 10 - 5
            bids = [(str(best_bid - 10 * i), size) for i, size in enumerate(sizes)]
            asks = [(str(best_bid + 10 + 10 * i), size) for i, size in enumerate(sizes)]
            publish(self.client, book(venue, bids, asks))
            kept = pubsub.latest_book(self.client, "BTC/USDT", venue)
            assert kept is not None
            offered = {("a", p): a for p, a in kept.asks} | {("b", p): a for p, a in kept.bids}
            self.books[(venue, kept.seq)] = offered
            close_old_connections()
            self.listener.on_price(pubsub.encode_quote(kept), now_ms())

    # --- trades, with and without a failure -------------------------------------------------------

    def waiting(self) -> list[int]:
        return list(Opportunity.objects.filter(status=Status.DISPATCHED).values_list("pk", flat=True))

    @rule(data=st.data())
    def execute(self, data: st.DataObject) -> None:
        waiting = self.waiting()
        if not waiting:
            return
        self._run(data.draw(st.sampled_from(waiting)))

    @rule(
        data=st.data(),
        step=st.sampled_from(sorted(STEPS)),
        fault=st.sampled_from(sorted(FAULTS)),
        after_calls=st.integers(0, 2),
    )
    def execute_with_a_fault(self, data: st.DataObject, step: str, fault: str, after_calls: int) -> None:
        waiting = self.waiting()
        if not waiting:
            return
        with fault_at(step, fault, after_calls):
            self._run(data.draw(st.sampled_from(waiting)))

    def _run(self, opportunity_id: int) -> None:
        close_old_connections()  # as a worker does before each task
        try:
            execution.execute_opportunity(opportunity_id)
        except (Exception, Killed):
            close_old_connections()

    @rule()
    def resume(self) -> None:
        """The resume sweep, and the trade task for each trade it hands on."""
        close_old_connections()
        for opportunity_id in lifecycle.abandoned():
            self._run(opportunity_id)

    @precondition(lambda self: self.restarts < 2)
    @rule()
    def restart_redis(self) -> None:
        """Redis restarts, keeping its data as a production Redis with AOF does."""
        self.server.restart(keep_data=True)
        self.restarts += 1

    @rule(data=st.data())
    def execute_after_the_database_dropped_the_session(self, data: st.DataObject) -> None:
        """The database drops this process's session: the trade's first statement fails."""
        waiting = self.waiting()
        if not waiting:
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        try:
            execution.execute_opportunity(data.draw(st.sampled_from(waiting)))
        except Exception:
            close_old_connections()

    # --- the rules of money ------------------------------------------------------------------------

    def paper_orders(self) -> dict[str, OrderResult]:
        """Every order the paper venues filled, by client order id."""
        from trading.venues.paper import _loads

        found = {}
        for key in self.client.scan_iter(f"{pubsub.names().prefix}paper:*"):
            result = _loads(self.client.get(key))
            found[result.client_order_id] = result
        return found

    def in_flight(self) -> bool:
        return Opportunity.objects.filter(status__in=lifecycle.IN_FLIGHT).exists()

    @invariant()
    def no_level_of_a_snapshot_is_filled_twice(self) -> None:
        taken: defaultdict[tuple[str, int, str, Decimal], Decimal] = defaultdict(Decimal)
        for key in self.client.scan_iter(f"{pubsub.names().prefix}paper:*"):
            venue = key.decode().split(":")[-2]
            raw = json.loads(self.client.get(key))
            side = "a" if raw["raw"]["side"] == Side.BUY else "b"
            for price, amount, _ in raw["fills"]:
                taken[(venue, raw["raw"]["book_seq"], side, Decimal(price))] += Decimal(amount)
        for (venue, seq, side, price), amount in taken.items():
            offered = self.books.get((venue, seq), {}).get((side, price), Decimal(0))
            assert amount <= offered, f"{venue} #{seq} {side} {price}: {amount} taken of {offered}"

    @invariant()
    def recorded_fills_are_the_venues(self) -> None:
        venue_orders = self.paper_orders()
        for order in Order.objects.all():
            found = venue_orders.get(order.client_order_id)
            if order.finished and found is not None:
                assert (order.filled, order.cost) == (found.filled, found.notional), order
            elif order.finished:
                assert order.filled == 0, f"{order} filled {order.filled} unknown to its venue"
            elif found is not None:
                assert order.opportunity.status in lifecycle.IN_FLIGHT, f"{order} unrecorded, not resumable"

    @invariant()
    def every_opportunity_is_final_or_resumable(self) -> None:
        open_alerts = set(Alert.objects.filter(resolved_at__isnull=True).values_list("key", flat=True))
        abandoned = set(lifecycle.abandoned())
        for opportunity in Opportunity.objects.all():
            if opportunity.status == Status.ATTENTION:
                assert f"leg_hedge:{opportunity.pk}" in open_alerts
            if opportunity.status == Status.EXECUTING:
                assert opportunity.pk in abandoned  # its worker is gone: the sweep hands it on
            assert opportunity.status in (*lifecycle.DONE, Status.DISPATCHED, Status.EXECUTING)

    @invariant()
    def exposure_over_its_cap_is_named_in_an_open_alert(self) -> None:
        over = [amount for amount in risk.open_exposure("BTC").values() if amount * MID > EXPOSURE_CAP]
        if over:
            keys = Alert.objects.filter(resolved_at__isnull=True).values_list("key", flat=True)
            assert any(key.startswith(("leg_hedge:", "settlement_interrupted:")) for key in keys)

    @invariant()
    def the_ledger_is_the_venues_and_pnl_the_change_in_holdings(self) -> None:
        if self.in_flight():
            return  # fills may be on a venue and not yet in the record: resumable, checked later
        assert_books_balance(self.paper_orders())

    def teardown(self) -> None:
        for _ in range(3):
            self.resume()
        assert not self.in_flight(), "a trade could not be resumed to its end"
        assert_books_balance(self.paper_orders())
        outcomes = sorted(set(Opportunity.objects.values_list("status", flat=True)))
        event(f"outcomes: {', '.join(outcomes) or 'none'}")


def assert_books_balance(venue_orders: dict[str, OrderResult]) -> None:
    """The ledger holds what the venues' fills left; realized PnL is the change in holdings."""
    expected: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for name in VENUES:
        for asset, amount in FUNDS.items():
            expected[(name, asset)] += amount
    for order in Order.objects.select_related("venue"):
        found = venue_orders.get(order.client_order_id)
        if found is None or not found.filled:
            continue
        execution_ = ledger.Execution(
            order.venue.name, order.symbol, Side(order.side), found.filled, found.notional, found.charges
        )
        for movement in ledger.executed(execution_):
            expected[(movement.venue, movement.asset)] += movement.free
    recorded = {(b.venue.name, b.asset): b.free + b.locked for b in Balance.objects.select_related("venue")}
    assert {k: v for k, v in recorded.items() if v} == {k: v for k, v in expected.items() if v}
    assert all(b.locked == 0 for b in Balance.objects.all())
    trades = list(Trade.objects.all())
    base, quote = split_symbol("BTC/USDT")
    change = {
        asset: sum(v for (_, a), v in recorded.items() if a == asset) - FUNDS[asset] * len(VENUES)
        for asset in (base, quote)
    }
    assert change[quote] == sum((t.quote_flow for t in trades), Decimal(0))
    assert change[base] == sum((t.base_flow for t in trades), Decimal(0))
    for trade in trades:
        assert trade.realized_pnl == trade.quote_flow + trade.base_flow * trade.mark_price


def test_money_is_accounted_for_whatever_fails(private_redis: PrivateRedis, settings: Any) -> None:
    settings.REDIS_URL = private_redis.url
    for name in VENUES:  # low fees, so that books a few ticks apart are worth trading
        make_venue(name, max_quote_age_ms=600_000, taker_fee=Decimal("0.0002"))
    make_strategy(
        min_profit_bps=Decimal(1),
        trade_size=Decimal("0.3"),
        ttl_ms=600_000,
        max_quote_age_ms=600_000,
        max_book_skew_ms=600_000,
    )
    MoneyRules.server = private_redis
    run_state_machine_as_test(
        MoneyRules,
        settings=run_settings(
            max_examples=15, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
