"""Trading limits: the questions asked of a sized trade before any order is sent."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import NOW, lot_amounts
from trading.core import risk
from trading.core.policy import Placed, Role
from trading.core.types import Leg, Side, SizedTrade

# Buy 0.5 BTC on alpha up to 30000, sell it on bravo down to 30100: 15,050 at stake.
TRADE = SizedTrade(
    symbol="BTC/USDT",
    buy=Leg("alpha", Side.BUY, Decimal("0.5"), Decimal("30000"), Decimal("30000"), Decimal("15")),
    sell=Leg("bravo", Side.SELL, Decimal("0.5"), Decimal("30100"), Decimal("30100"), Decimal("15.05")),
    gross_profit=Decimal("50"),
    net_profit=Decimal("19.95"),
    net_bps=Decimal("13.3"),
)
OPEN = risk.Limits(
    max_trade_notional=None, max_open_exposure=None, daily_loss_limit=Decimal(500), pair_cooldown_ms=0
)
FLAT = risk.RiskState(exposure={}, last_pair_trade_ms=None)


def test_a_trade_within_every_limit_goes_ahead() -> None:
    limits = replace(OPEN, max_trade_notional=Decimal(15_050), max_open_exposure=Decimal(15_050))

    assert risk.trade_violation(TRADE, limits, FLAT, NOW) is None


def test_the_notional_at_stake_is_the_larger_leg_at_its_guard_price() -> None:
    assert risk.trade_notional(TRADE) == Decimal("15050")


def test_a_trade_over_the_notional_limit_is_rejected_with_both_figures() -> None:
    limits = replace(OPEN, max_trade_notional=Decimal("15049.99"))

    assert risk.trade_violation(TRADE, limits, FLAT, NOW) == "risk: max_notional 15050 over 15049.99"


@pytest.mark.parametrize("paused", [{"alpha"}, {"bravo"}, {"alpha", "bravo"}])
def test_a_trade_touching_a_paused_venue_is_rejected(paused: set[str]) -> None:
    limits = replace(OPEN, paused_venues=frozenset(paused))

    assert risk.trade_violation(TRADE, limits, FLAT, NOW) == f"risk: venue_paused {', '.join(sorted(paused))}"


def test_a_paused_venue_elsewhere_does_not_stop_the_pair() -> None:
    assert risk.trade_violation(TRADE, replace(OPEN, paused_venues=frozenset({"charlie"})), FLAT, NOW) is None


def test_exposure_already_open_on_a_venue_counts_against_the_cap() -> None:
    """0.3 BTC already unhedged on bravo plus the 0.5 this trade could leave there, at 30100."""
    limits = replace(OPEN, max_open_exposure=Decimal(20_000))
    state = replace(FLAT, exposure={("bravo", "BTC"): Decimal("0.3")})

    assert risk.trade_violation(TRADE, limits, state, NOW) == "risk: max_exposure bravo BTC 24080 over 20000"
    assert (
        risk.trade_violation(TRADE, limits, replace(state, exposure={("bravo", "ETH"): Decimal(9)}), NOW)
        is None
    )


def test_each_leg_can_leave_its_amount_open_on_its_venue() -> None:
    assert risk.added_exposure(TRADE) == {
        ("alpha", "BTC"): (Decimal("0.5"), Decimal("30000")),
        ("bravo", "BTC"): (Decimal("0.5"), Decimal("30100")),
    }


@pytest.mark.parametrize(
    ("since_ms", "rejected"), [(0, True), (9_999, True), (10_000, False), (60_000, False)]
)
def test_a_pair_waits_out_its_cooldown_after_a_trade(since_ms: int, rejected: bool) -> None:
    limits = replace(OPEN, pair_cooldown_ms=10_000)
    state = replace(FLAT, last_pair_trade_ms=NOW - since_ms)

    reason = risk.trade_violation(TRADE, limits, state, NOW)

    assert (reason is not None) is rejected
    if rejected:
        assert reason == f"risk: cooldown alpha->bravo traded {since_ms} ms ago, cooldown 10000 ms"


def test_a_pair_that_never_traded_has_no_cooldown() -> None:
    assert not risk.in_cooldown(None, NOW, 10_000)


def test_without_a_cooldown_a_pair_is_never_waiting_whatever_the_clocks_say() -> None:
    assert not risk.in_cooldown(NOW + 342, NOW, 0)


def test_the_first_broken_limit_is_the_reason() -> None:
    limits = risk.Limits(Decimal(1), Decimal(1), Decimal(500), 10_000, frozenset({"alpha"}))

    assert risk.trade_violation(TRADE, limits, replace(FLAT, last_pair_trade_ms=NOW), NOW) == (
        "risk: venue_paused alpha"
    )


@pytest.mark.parametrize(
    ("pnls", "past"),
    [
        ([], False),
        (["-500"], False),
        (["-500.01"], True),
        (["-400", "-100"], False),
        (["-600", "100.01"], False),
    ],
)
def test_the_daily_loss_is_past_its_limit_only_when_the_days_total_loses_more(
    pnls: list[str], past: bool
) -> None:
    assert risk.past_daily_loss([Decimal(p) for p in pnls], Decimal(500)) is past


def placed(role: Role, venue: str, side: Side, amount: str, filled: str, finished: bool = True) -> Placed:
    return Placed(role, 0, venue, side, Decimal(amount), Decimal(30_000), Decimal(filled), finished=finished)


def test_a_filled_leg_whose_partner_is_still_being_retried_counts_in_full() -> None:
    orders = [
        placed(Role.BUY, "alpha", Side.BUY, "0.5", "0.5"),
        placed(Role.SELL, "bravo", Side.SELL, "0.5", "0", finished=True),  # rejected: a retry follows
    ]

    assert risk.exposure(orders) == {"alpha": Decimal("0.5")}


def test_legs_in_flight_count_on_both_venues_until_they_fill() -> None:
    orders = [
        placed(Role.BUY, "alpha", Side.BUY, "0.5", "0", finished=False),
        placed(Role.SELL, "bravo", Side.SELL, "0.5", "0", finished=False),
    ]

    assert risk.exposure(orders) == {"alpha": Decimal("0.5"), "bravo": Decimal("0.5")}


def test_a_hedged_partial_nets_to_nothing() -> None:
    """Bought 0.5 on alpha, sold 0.2 on bravo, the other 0.3 sold back on alpha: flat."""
    orders = [
        placed(Role.BUY, "alpha", Side.BUY, "0.5", "0.5"),
        placed(Role.SELL, "bravo", Side.SELL, "0.5", "0.2"),
        placed(Role.HEDGE, "alpha", Side.SELL, "0.3", "0.3"),
    ]

    assert risk.exposure(orders) == {}


def test_what_a_hedge_could_not_close_stays_open_where_it_filled() -> None:
    orders = [
        placed(Role.BUY, "alpha", Side.BUY, "0.5", "0"),
        placed(Role.SELL, "bravo", Side.SELL, "0.5", "0.5"),
        placed(Role.HEDGE, "bravo", Side.BUY, "0.5", "0.1"),
    ]

    assert risk.exposure(orders) == {"bravo": Decimal("0.4")}


@given(
    st.lists(
        st.tuples(st.sampled_from(list(Role)), st.sampled_from(list(Side)), lot_amounts(), st.booleans()),
        max_size=6,
    )
)
def test_exposure_is_never_negative_and_finished_matched_orders_leave_none(
    drawn: list[tuple[Role, Side, Decimal, bool]],
) -> None:
    orders = [
        Placed(
            role,
            0,
            role.value if role is not Role.HEDGE else "alpha",
            side,
            amount,
            Decimal(1),
            amount,
            finished=done,
        )
        for role, side, amount, done in drawn
    ]

    at_stake = risk.exposure(orders)

    assert all(amount > 0 for amount in at_stake.values())
    bought = sum((o.filled for o in orders if o.side is Side.BUY), Decimal(0))
    sold = sum((o.filled for o in orders if o.side is Side.SELL), Decimal(0))
    if all(o.finished for o in orders) and bought == sold:
        assert at_stake == {}
