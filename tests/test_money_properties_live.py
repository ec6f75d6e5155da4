"""The money rules (tests.money_rules) as properties of random runs live: the real ccxt client
trading on the exchange emulator's Binance and Kraken, whose books are the ones published, with
failures injected anywhere on our side and the venues misbehaving as their documentation says they
may: refusing orders, filling part of them, filling after a cancel, leaving a cancel pending,
ignoring the client order id filter, or answering 429 and 503. Binance takes its fee from what an
order receives, Kraken in the quote currency. The venues' own records (orders, fills, balances) are
the truth the ledger is held to."""

from __future__ import annotations

import base64
from collections import Counter
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as run_settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from devtools.emulator import Emulator, emulate
from tests.conftest import PrivateRedis, emulated_venues
from tests.money_rules import FUNDS, SYMBOL, MoneyRules, VenueFill, make_rules_strategy
from trading import accounts
from trading.models import Order, Venue
from trading.venues.ccxt_gateway import binance_cancel_id

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
VENUES = ("binance", "kraken")
KEYS = {"binance": "prop-binance-key-5d1e", "kraken": "prop-kraken-key-c07b"}
SECRETS = {"binance": "prop-binance-secret-77aa", "kraken": base64.b64encode(b"prop-kraken-secret").decode()}
FEE_ASSETS = {"binance": "received", "kraken": "quote"}
TAKER_FEE = Decimal("0.0002")
VENUE_FAULTS: dict[str, dict[str, Any]] = {
    "refuses orders": {"reject": "market closed"},
    "fills 40% of each order": {"fill_fraction": "0.4"},
    "fills after the cancel": {"fill_after_cancel": True},
    "leaves the cancel pending": {"fill_after_cancel": True, "cancel_pending_reads": 2},
    "ignores the client id filter": {"ignore_client_id_filter": True},
    "answers 429": {"status": 429},
    "answers 503": {"status": 503},
}


class LiveMoneyRules(MoneyRules):
    venues = VENUES
    emulator: ClassVar[Emulator]  # set by the test

    def __init__(self) -> None:
        self.emulator.reset()
        for venue in VENUES:
            self.emulator.set_taker_fee(venue, TAKER_FEE)
            self.emulator.add_account(venue, KEYS[venue], SECRETS[venue], FUNDS, fee_asset=FEE_ASSETS[venue])
        super().__init__()
        accounts.refresh_all()  # as a worker does when it starts: fee tiers and market rules recorded
        self.listener.refresh_venues()

    def serve(self, venue: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        self.emulator.set_book(venue, SYMBOL, bids, asks)

    @rule(data=st.data(), venue=st.sampled_from(VENUES), fault=st.sampled_from(sorted(VENUE_FAULTS)))
    def execute_while_a_venue_misbehaves(self, data: st.DataObject, venue: str, fault: str) -> None:
        waiting = self.waiting()
        if not waiting:
            return
        self.emulator.set_fault(venue, **VENUE_FAULTS[fault])
        try:
            self.run_trade(data.draw(st.sampled_from(waiting)))
        finally:
            self.emulator.clear_fault(venue)

    def venue_fills(self) -> dict[str, VenueFill]:
        """The venues' orders by the client order id we gave them (Binance relabels a cancelled
        order with the cancel's id); an id may stand on one order of an account, ever."""
        ours = set(Order.objects.values_list("client_order_id", flat=True))
        fills: dict[str, VenueFill] = {}
        for venue in VENUES:
            orders = self.emulator.orders(venue, KEYS[venue])
            ids = [o.client_order_id for o in orders]
            assert not [cid for cid, n in Counter(ids).items() if n > 1], f"{venue} reused an id: {ids}"
            for order in orders:
                given = next(
                    (cid for cid in ours if order.client_order_id in (cid, binance_cancel_id(cid))),
                    order.client_order_id,
                )
                fills[given] = (order.filled, order.cost)
        return fills

    def venue_balances(self) -> dict[tuple[str, str], Decimal]:
        return {
            (venue, asset): amount
            for venue in VENUES
            for asset, amount in self.emulator.balances(venue, KEYS[venue]).items()
        }

    def teardown(self) -> None:
        for venue in VENUES:
            self.emulator.clear_fault(venue)
        super().teardown()


def test_money_is_accounted_for_live_whatever_fails_here_or_at_the_venues(
    private_redis: PrivateRedis, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.REDIS_URL = private_redis.url
    settings.TRADING_MODE = "live"
    settings.LIVE_RATE_LIMITED = False
    settings.LEG_FILL_DEADLINE_MS = 300  # an order left open is cancelled soon
    for venue in VENUES:
        monkeypatch.setenv(f"ARB_{venue.upper()}_API_KEY", KEYS[venue])
        monkeypatch.setenv(f"ARB_{venue.upper()}_API_SECRET", SECRETS[venue])
    with emulate(*VENUES) as emulator:
        emulated_venues(emulator)
        Venue.objects.update(max_quote_age_ms=600_000, taker_fee=TAKER_FEE)
        make_rules_strategy()
        LiveMoneyRules.server = private_redis
        LiveMoneyRules.emulator = emulator
        checks = run_settings(max_examples=10, stateful_step_count=25, deadline=None)
        run_state_machine_as_test(
            LiveMoneyRules, settings=run_settings(checks, suppress_health_check=list(HealthCheck))
        )
