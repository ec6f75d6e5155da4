"""The one settlement policy: given what an opportunity's orders did so far, what to do next.

Both legs are sent at once. A leg that misses part of its amount is retried for what it misses,
within its guard price, up to `retries` times. What stays one-sided is then hedged back on the
venue where it filled (the opposite side, no worse than `hedge_max_loss_bps` off its fill price),
up to `hedge_attempts` times. Live and paper settlement follow it, and so does the backtest; the
callers only carry out the steps and record them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from operator import attrgetter

from trading.core.fills import guard_price, tick_of
from trading.core.types import ZERO, Side


class Role(StrEnum):
    """What an order is for: one of the two legs, or closing what they left one-sided."""

    BUY = "buy"
    SELL = "sell"
    HEDGE = "hedge"


@dataclass(frozen=True, slots=True)
class Placed:
    """One order of an opportunity as the record knows it. `finished` is the venue's word that
    nothing more will fill; `base_fee` is the base asset it was charged as fee (a buy then holds
    less than it filled)."""

    role: Role
    attempt: int
    venue: str
    side: Side
    amount: Decimal
    limit: Decimal
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    base_fee: Decimal = ZERO
    finished: bool = True


@dataclass(frozen=True, slots=True)
class Rules:
    """The policy's settings, and each venue's amount step (what cannot be traded is dust)."""

    retries: int
    hedge_attempts: int
    hedge_max_loss_bps: Decimal
    steps: Mapping[str, Decimal]
    ticks: Mapping[str, Decimal | None]

    def step(self, venue: str) -> Decimal:
        return self.steps.get(venue, ZERO)


class Outcome(StrEnum):
    MATCHED = "matched"  # both legs filled in full
    PARTIAL = "partial"  # both legs filled the same, less than planned
    HEDGED = "hedged"  # what stayed one-sided was closed by a hedge
    FLAT = "flat"  # nothing filled
    OPEN = "open"  # a position is left that the policy could not close


@dataclass(frozen=True, slots=True)
class Confirm:
    """Learn the outcome of the unfinished orders (send them, or look them up) first."""

    unfinished: tuple[Placed, ...]


@dataclass(frozen=True, slots=True)
class Send:
    """Record, then send, a new order: a retry of a leg or a hedge."""

    role: Role
    attempt: int
    venue: str
    side: Side
    amount: Decimal
    limit: Decimal


@dataclass(frozen=True, slots=True)
class Done:
    """Nothing more to send. `open_amount` is the base left one-sided on `venue` (positive: held
    there, negative: owed there), zero unless the outcome is OPEN."""

    outcome: Outcome
    matched: Decimal
    venue: str | None = None
    open_amount: Decimal = ZERO


Step = Confirm | Send | Done


def next_step(orders: Sequence[Placed], rules: Rules) -> Step:
    """What to do next for an opportunity whose orders are `orders` (both legs' first orders
    included, in any order)."""
    unfinished = tuple(order for order in orders if not order.finished)
    if unfinished:
        return Confirm(unfinished)
    roles = _by_role(orders)
    retry = _retry(roles, rules)
    if retry is not None:
        return retry
    return _close(orders, roles, rules)


def _by_role(orders: Sequence[Placed]) -> dict[Role, list[Placed]]:
    """The orders of each role (those present), by attempt."""
    roles: dict[Role, list[Placed]] = {}
    for order in orders:
        roles.setdefault(order.role, []).append(order)
    for placed in roles.values():
        placed.sort(key=attrgetter("attempt"))
    return roles


def _filled(orders: Sequence[Placed]) -> Decimal:
    return sum((order.filled for order in orders), ZERO)


def _retry(roles: Mapping[Role, Sequence[Placed]], rules: Rules) -> Send | None:
    """A retry of the first leg that misses part of its amount and has attempts left."""
    for role in (Role.BUY, Role.SELL):
        leg = roles.get(role)
        if not leg:
            continue
        first, last = leg[0], leg[-1]
        missing = first.amount - _filled(leg)
        if missing > ZERO and last.attempt < rules.retries:
            return Send(role, last.attempt + 1, first.venue, first.side, missing, first.limit)
    return None


def position(orders: Sequence[Placed]) -> Decimal:
    """The base the opportunity bought beyond what it sold, across venues (negative: sold beyond
    what it bought), counting fills as the venues filled them."""
    bought = sold = ZERO
    for order in orders:
        if order.side is Side.BUY:
            bought += order.filled
        elif order.side is Side.SELL:
            sold += order.filled
    return bought - sold


def open_base(orders: Sequence[Placed]) -> Decimal:
    """What a hedge has to close: the base held beyond what was sold (a buy charged its fee in
    base holds that much less, and the fee is a cost, not a position), or the base sold beyond
    what was bought, as a negative amount."""
    gross = position(orders)
    if gross <= ZERO:
        return gross
    fees = sum((order.base_fee for order in orders if order.side is Side.BUY), ZERO)
    return max(gross - fees, ZERO)


def matched(orders: Sequence[Placed]) -> Decimal:
    """The amount both legs (retries included, hedges not) filled alike."""
    return _matched(_by_role(orders))


def _matched(roles: Mapping[Role, Sequence[Placed]]) -> Decimal:
    return min(_filled(roles.get(Role.BUY, ())), _filled(roles.get(Role.SELL, ())))


def _close(orders: Sequence[Placed], roles: Mapping[Role, Sequence[Placed]], rules: Rules) -> Step:
    """Once no leg has a retry left: done if the legs match, else hedge what stays one-sided."""
    legs = [order for order in orders if order.role is not Role.HEDGE]
    both = _matched(roles)
    one_way = position(legs)
    if not one_way:
        planned = max((order.amount for order in legs if order.attempt == 0), default=ZERO)
        outcome = Outcome.FLAT if not both else Outcome.MATCHED if both >= planned else Outcome.PARTIAL
        return Done(outcome, both)
    long = one_way > ZERO
    one_sided = [order for order in legs if order.side is (Side.BUY if long else Side.SELL)]
    venue = one_sided[0].venue
    left = open_base(orders)
    amount = _tradeable(abs(left), rules.step(venue))
    if amount <= ZERO:
        return Done(Outcome.HEDGED, both)  # nothing tradeable is left: a fee or dust below the step
    hedges = roles.get(Role.HEDGE, ())
    if len(hedges) >= rules.hedge_attempts:
        return Done(Outcome.OPEN, both, venue, left)
    side = Side.SELL if left > ZERO else Side.BUY
    limit = hedge_limit(one_sided, side, rules.hedge_max_loss_bps, rules.ticks.get(venue))
    return Send(Role.HEDGE, len(hedges), venue, side, amount, limit)


def _tradeable(amount: Decimal, step: Decimal) -> Decimal:
    """`amount` rounded down to a multiple of `step` (unchanged without a step)."""
    return amount if step <= ZERO else amount // step * step


def hedge_limit(filled: Sequence[Placed], side: Side, max_loss_bps: Decimal, tick: Decimal | None) -> Decimal:
    """The worst price a hedge on `side` may take: the one-sided fills' average moved against us
    by `max_loss_bps`, rounded inward onto `tick` (the first order's own tick when unknown)."""
    amount = _filled(filled)
    average = sum((order.cost for order in filled), ZERO) / amount
    return guard_price(average, side, max_loss_bps, tick or tick_of(filled[0].limit))
