"""The money rules (tests.money_rules) as properties of random runs on paper: random books on three
venues, the listener opening opportunities that share them, and trades executed with failures
injected anywhere. On paper the venue's fills are the paper orders kept in Redis, and besides the
rules every run keeps, no level of a book snapshot may be filled twice."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as run_settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from tests.conftest import PrivateRedis, make_venue
from tests.money_rules import FUNDS, MoneyRules, VenueFill, make_rules_strategy
from trading import pubsub
from trading.core import ledger
from trading.core.types import Side
from trading.models import Order
from trading.venues.base import OrderResult
from trading.venues.paper import _loads

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
VENUES = ("alpha", "bravo", "charlie")


class PaperMoneyRules(MoneyRules):
    venues = VENUES

    def paper_orders(self) -> dict[str, OrderResult]:
        """Every order the paper venues filled, by client order id."""
        found = {}
        for key in self.client.scan_iter(f"{pubsub.names().prefix}paper:*"):
            result = _loads(self.client.get(key))
            found[result.client_order_id] = result
        return found

    def venue_fills(self) -> dict[str, VenueFill]:
        return {cid: (result.filled, result.notional) for cid, result in self.paper_orders().items()}

    def venue_balances(self) -> dict[tuple[str, str], Decimal]:
        """A paper venue holds what it was funded with, moved by what it filled."""
        held: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for name in VENUES:
            for asset, amount in FUNDS.items():
                held[(name, asset)] += amount
        venue_orders = self.paper_orders()
        for order in Order.objects.select_related("venue"):
            found = venue_orders.get(order.client_order_id)
            if found is None or not found.filled:
                continue
            execution_ = ledger.Execution(
                order.venue.name, order.symbol, Side(order.side), found.filled, found.notional, found.charges
            )
            for movement in ledger.executed(execution_):
                held[(movement.venue, movement.asset)] += movement.free
        return held

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


def test_money_is_accounted_for_whatever_fails(private_redis: PrivateRedis, settings: Any) -> None:
    settings.REDIS_URL = private_redis.url
    for name in VENUES:  # low fees, so that books a few ticks apart are worth trading
        make_venue(name, max_quote_age_ms=600_000, taker_fee=Decimal("0.0002"))
    make_rules_strategy()
    PaperMoneyRules.server = private_redis
    run_state_machine_as_test(
        PaperMoneyRules,
        settings=run_settings(
            max_examples=15, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
