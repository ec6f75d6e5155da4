"""The money rules as a hypothesis state machine, for any venues: opportunities that share books,
trades executed with a failure injected at any step of execution and settlement (an error, a
database error, a lost Redis, a soft time limit, or the process killed outright), Redis restarts,
database sessions killed, and the resume sweep.

After every step, and once everything is resumed: what the record says each order filled is what
its venue filled, the ledger is the venues' balances, realized PnL is the change in holdings valued
at the mark, exposure over its cap is named in an open alert, and every opportunity is final or
resumable. A subclass says what the venues are: how books reach them and the listener, and what
they say they filled and hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import redis
from billiard.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError, close_old_connections, connection
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import PrivateRedis, fund, make_strategy
from tests.quotes import book, publish
from trading import (
    balances,
    book_claims,
    execution,
    legs,
    lifecycle,
    pubsub,
    risk_controls,
    settlement,
    trade_store,
)
from trading.clock import now_ms
from trading.core.types import split_symbol
from trading.listener import Listener
from trading.models import Alert, Balance, Opportunity, Order, RiskLimits, Trade, Venue

Status = Opportunity.Status
SYMBOL = "BTC/USDT"
MID = Decimal(30_000)
EXPOSURE_CAP = Decimal(20_000)
# What each venue holds at the start, in the record and on the venue alike.
FUNDS = {"BTC": Decimal(5), "USDT": Decimal(150_000)}
# Each order as its venue tells it: (filled, what the fills came to in the quote currency).
VenueFill = tuple[Decimal, Decimal]


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
    "claim, balance locks and limits": (trade_store, "claim"),
    "liquidity": (book_claims, "transact"),
    "orders recorded": (trade_store, "insert"),
    "funds held": (trade_store, "holding"),
    "sending": (legs, "run"),
    "recording an answer": (settlement, "_save"),
    "a retry or hedge": (settlement, "_record"),
    "ledger": (balances, "apply"),
    "cash flow": (settlement, "record_cash_flow"),
    "finish": (settlement, "finish"),
    "daily loss": (risk_controls, "enforce_daily_loss"),
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


def make_rules_strategy() -> None:
    """A strategy that trades books a few ticks apart (on venues with low fees), whatever their age."""
    make_strategy(
        min_profit_bps=Decimal(1),
        trade_size=Decimal("0.3"),
        ttl_ms=600_000,
        max_quote_age_ms=600_000,
        max_book_skew_ms=600_000,
    )


class MoneyRules(RuleBasedStateMachine):
    server: PrivateRedis  # set by the test
    venues: tuple[str, ...]  # set by each kind of run

    def __init__(self) -> None:
        super().__init__()
        for model in (Trade, Order, Alert, Opportunity, Balance):
            model.objects.all().delete()
        self.server.client.flushall()
        self.client = self.server.client
        for venue in Venue.objects.filter(name__in=self.venues):
            fund(venue, **{asset: str(amount) for asset, amount in FUNDS.items()})
        RiskLimits.current()
        RiskLimits.objects.filter(pk=1).update(max_open_exposure=EXPOSURE_CAP, daily_loss_limit=10**9)
        self.listener = Listener(self.client)
        self.listener.load_strategy()
        self.restarts = 0
        # The levels each published snapshot offered: (venue, seq) -> {(side, price): amount}.
        self.books: dict[tuple[str, int], dict[tuple[str, Decimal], Decimal]] = {}

    # --- the market and the listener ------------------------------------------------------------

    @rule(
        offsets=st.lists(st.integers(-6, 6), min_size=3, max_size=3),
        sizes=st.lists(st.sampled_from(["0.05", "0.1", "0.2", "0.5"]), min_size=1, max_size=3),
    )
    def publish_books(self, offsets: list[int], sizes: list[str]) -> None:
        """A book of every venue around 30,000 (levels 10 apart, each venue's best bid its offset
        x 10 off the mid), served by the venue, published by its collector and taken by the
        listener as it arrives."""
        for venue, offset in zip(self.venues, offsets, strict=False):
            best_bid = MID + offset * 10 - 5
            bids = [(str(best_bid - 10 * i), size) for i, size in enumerate(sizes)]
            asks = [(str(best_bid + 10 + 10 * i), size) for i, size in enumerate(sizes)]
            self.serve(venue, bids, asks)
            publish(self.client, book(venue, bids, asks))
            kept = pubsub.latest_book(self.client, SYMBOL, venue)
            assert kept is not None
            self.books[(venue, kept.seq)] = {("a", p): a for p, a in kept.asks} | {
                ("b", p): a for p, a in kept.bids
            }
            close_old_connections()
            self.listener.on_price(pubsub.encode_quote(kept), now_ms())

    def serve(self, venue: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        """The venue's own book from now on (a paper venue fills against the published book)."""

    # --- what the venues say ------------------------------------------------------------------------

    def venue_fills(self) -> dict[str, VenueFill]:
        """Every order the venues know, by client order id."""
        raise NotImplementedError

    def venue_balances(self) -> dict[tuple[str, str], Decimal]:
        """What each venue holds of each asset now."""
        raise NotImplementedError

    # --- trades, with and without a failure -------------------------------------------------------

    def waiting(self) -> list[int]:
        return list(Opportunity.objects.filter(status=Status.DISPATCHED).values_list("pk", flat=True))

    @rule(data=st.data())
    def execute(self, data: st.DataObject) -> None:
        waiting = self.waiting()
        if not waiting:
            return
        self.run_trade(data.draw(st.sampled_from(waiting)))

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
            self.run_trade(data.draw(st.sampled_from(waiting)))

    def run_trade(self, opportunity_id: int) -> None:
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
            self.run_trade(opportunity_id)

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
        self.run_trade(data.draw(st.sampled_from(waiting)))

    # --- the rules of money ------------------------------------------------------------------------

    def in_flight(self) -> bool:
        return Opportunity.objects.filter(status__in=lifecycle.IN_FLIGHT).exists()

    @invariant()
    def recorded_fills_are_the_venues(self) -> None:
        venue_fills = self.venue_fills()
        for order in Order.objects.all():
            found = venue_fills.get(order.client_order_id)
            if order.finished and found is not None:
                assert (order.filled, order.cost) == found, order
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
        over = [
            amount for amount in risk_controls.open_exposure("BTC").values() if amount * MID > EXPOSURE_CAP
        ]
        if over:
            keys = Alert.objects.filter(resolved_at__isnull=True).values_list("key", flat=True)
            assert any(key.startswith(("leg_hedge:", "settlement_interrupted:")) for key in keys)

    @invariant()
    def the_ledger_is_the_venues_and_pnl_the_change_in_holdings(self) -> None:
        if self.in_flight():
            return  # fills may be on a venue and not yet in the record: resumable, checked later
        self.assert_books_balance()

    def assert_books_balance(self) -> None:
        """The ledger holds what the venues hold; realized PnL is the change in holdings."""
        recorded = {
            (b.venue.name, b.asset): b.free + b.locked for b in Balance.objects.select_related("venue")
        }
        held = self.venue_balances()
        assert {k: v for k, v in recorded.items() if v} == {k: v for k, v in held.items() if v}
        assert all(b.locked == 0 for b in Balance.objects.all())
        trades = list(Trade.objects.all())
        base, quote = split_symbol(SYMBOL)
        change = {
            asset: sum(v for (_, a), v in recorded.items() if a == asset) - FUNDS[asset] * len(self.venues)
            for asset in (base, quote)
        }
        assert change[quote] == sum((t.quote_flow for t in trades), Decimal(0))
        assert change[base] == sum((t.base_flow for t in trades), Decimal(0))
        for trade in trades:
            assert trade.realized_pnl == trade.quote_flow + trade.base_flow * trade.mark_price

    def teardown(self) -> None:
        for _ in range(3):
            self.resume()
        assert not self.in_flight(), "a trade could not be resumed to its end"
        self.assert_books_balance()
        outcomes = sorted(set(Opportunity.objects.values_list("status", flat=True)))
        event(f"outcomes: {', '.join(outcomes) or 'none'}")
