"""The one settlement policy: confirm what is unfinished, retry what a leg misses within its guard,
hedge what stays one-sided, and say when a position is left."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from trading.core.policy import Confirm, Done, Outcome, Placed, Role, Rules, Send, next_step, open_base
from trading.core.types import Side

RULES = Rules(
    retries=2,
    hedge_attempts=2,
    hedge_max_loss_bps=Decimal(50),
    steps={"alpha": Decimal("0.00001"), "bravo": Decimal("0.00001")},
    ticks={"alpha": Decimal("0.01"), "bravo": Decimal("0.01")},
)


def buy(filled: str, attempt: int = 0, amount: str = "0.5", **fields: object) -> Placed:
    values: dict[str, object] = {"cost": Decimal(filled) * 30000}
    values.update(fields)
    return Placed(
        Role.BUY, attempt, "alpha", Side.BUY, Decimal(amount), Decimal(30000), Decimal(filled), **values
    )  # type: ignore[arg-type]


def sell(filled: str, attempt: int = 0, amount: str = "0.5", **fields: object) -> Placed:
    values: dict[str, object] = {"cost": Decimal(filled) * 30100}
    values.update(fields)
    return Placed(
        Role.SELL, attempt, "bravo", Side.SELL, Decimal(amount), Decimal(30100), Decimal(filled), **values
    )  # type: ignore[arg-type]


def test_unfinished_orders_are_confirmed_before_anything_else() -> None:
    pending = sell("0", finished=False)

    assert next_step([buy("0.5"), pending], RULES) == Confirm((pending,))


def test_both_legs_filled_is_a_matched_trade() -> None:
    assert next_step([buy("0.5"), sell("0.5")], RULES) == Done(Outcome.MATCHED, Decimal("0.5"))


def test_a_leg_that_missed_is_retried_for_what_it_missed_at_its_own_guard() -> None:
    step = next_step([buy("0.5"), sell("0.2")], RULES)

    assert step == Send(Role.SELL, 1, "bravo", Side.SELL, Decimal("0.3"), Decimal(30100))


def test_after_the_last_retry_what_stays_one_sided_is_hedged_where_it_filled() -> None:
    orders = [buy("0.5"), sell("0"), sell("0", attempt=1, amount="0.5"), sell("0", attempt=2, amount="0.5")]

    step = next_step(orders, RULES)

    # sell back the 0.5 bought at 30,000 on alpha, no lower than 50 bps under it
    assert step == Send(Role.HEDGE, 0, "alpha", Side.SELL, Decimal("0.5"), Decimal(29850))


def test_a_hedge_that_closed_the_position_ends_hedged_with_the_matched_part_kept() -> None:
    orders = [
        buy("0.5"),
        sell("0.2"),
        sell("0", attempt=1, amount="0.3"),
        sell("0", attempt=2, amount="0.3"),
        Placed(Role.HEDGE, 0, "alpha", Side.SELL, Decimal("0.3"), Decimal(29850), Decimal("0.3")),
    ]

    assert next_step(orders, RULES) == Done(Outcome.HEDGED, Decimal("0.2"))


def test_a_hedge_that_could_not_close_it_all_is_tried_again_then_the_position_is_named() -> None:
    legs = [buy("0"), buy("0", 1), buy("0", 2), sell("0.5")]
    first_hedge = Placed(Role.HEDGE, 0, "bravo", Side.BUY, Decimal("0.5"), Decimal("30250.5"), Decimal("0.1"))
    second = next_step([*legs, first_hedge], RULES)
    assert second == Send(Role.HEDGE, 1, "bravo", Side.BUY, Decimal("0.4"), Decimal("30250.5"))

    both = [
        *legs,
        first_hedge,
        Placed(Role.HEDGE, 1, "bravo", Side.BUY, Decimal("0.4"), Decimal(30250), Decimal(0)),
    ]

    assert next_step(both, RULES) == Done(Outcome.OPEN, Decimal(0), "bravo", Decimal("-0.4"))


def test_a_buy_that_paid_its_fee_in_base_is_hedged_for_what_it_holds() -> None:
    """Bought 0.5 gross, 0.4995 held after a base fee: the hedge sells 0.4995, and the 0.0005
    left of the gross position is the fee, not a position."""
    legs = [buy("0.5", base_fee=Decimal("0.0005")), sell("0"), sell("0", 1), sell("0", 2)]
    hedge = next_step(legs, RULES)
    assert isinstance(hedge, Send)
    assert hedge.amount == Decimal("0.4995")

    done = Placed(Role.HEDGE, 0, "alpha", Side.SELL, Decimal("0.4995"), hedge.limit, Decimal("0.4995"))

    assert next_step([*legs, done], RULES) == Done(Outcome.HEDGED, Decimal(0))


def test_nothing_filled_anywhere_ends_flat() -> None:
    orders = [buy("0"), buy("0", 1), buy("0", 2), sell("0"), sell("0", 1), sell("0", 2)]

    assert next_step(orders, RULES) == Done(Outcome.FLAT, Decimal(0))


def test_legs_that_matched_short_of_the_plan_end_partial() -> None:
    orders = [
        buy("0.3"),
        buy("0", 1, "0.2"),
        buy("0", 2, "0.2"),
        sell("0.3"),
        sell("0", 1, "0.2"),
        sell("0", 2, "0.2"),
    ]

    assert next_step(orders, RULES) == Done(Outcome.PARTIAL, Decimal("0.3"))


fills = st.integers(0, 50).map(lambda n: Decimal(n) / 100)


@given(bought=fills, sold=fills, hedge_fills=st.lists(fills, max_size=3))
def test_the_policy_ends_flat_or_names_exactly_what_is_left(
    bought: Decimal, sold: Decimal, hedge_fills: list[Decimal]
) -> None:
    """Playing the policy out with legs and hedges that fill what they fill: it stops within its
    attempts, and OPEN carries exactly the base left one-sided."""
    orders = [buy(str(bought)), sell(str(sold))]
    fills_left = list(hedge_fills)
    for _ in range(10):
        step = next_step(orders, RULES)
        if isinstance(step, Done):
            break
        assert isinstance(step, Send)
        filled = min(step.amount, fills_left.pop(0)) if step.role is Role.HEDGE and fills_left else Decimal(0)
        if step.role is Role.HEDGE and not hedge_fills:
            filled = step.amount
        orders.append(
            Placed(
                step.role,
                step.attempt,
                step.venue,
                step.side,
                step.amount,
                step.limit,
                filled,
                filled * step.limit,
            )
        )
    assert isinstance(step, Done)
    if step.outcome is Outcome.OPEN:
        assert step.open_amount == open_base(orders) != 0
    else:
        assert open_base(orders) == 0
