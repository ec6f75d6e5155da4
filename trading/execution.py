"""Executing a dispatched opportunity: claim it, re-check it, reserve its liquidity, record its
orders and hold their funds; trading.settlement then sends the legs and records the outcome, in
paper and live alike.

The re-check reads nothing from a venue: balances are the ledger's (reservations of trades in
flight included), fee tiers and market rules are the record's, kept current from the venues by
trading.accounts. It takes the balance locks of both venues first and only then reads the books,
the liquidity already taken from them and the clock, so it decides on what holds when its orders
go out. A task redelivered after its worker died (or handed the opportunity by the resume sweep)
takes it over where that worker stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from redis.client import Pipeline

from trading import balances, book_claims, lifecycle, orders, pubsub, risk_controls, settlement, trade_store
from trading.clock import now_ms, to_ms
from trading.core import liquidity
from trading.core.fills import fill
from trading.core.liquidity import Claim
from trading.core.policy import Role
from trading.core.strategy import evaluate_pair
from trading.core.types import ZERO, Quote, Side, SizedTrade, StrategyParams, VenueState
from trading.core_inputs import strategy_params, venue_state
from trading.models import Balance, Opportunity, Order, StrategyConfig
from trading.observability import metrics
from trading.observability.logs import correlation, opportunity_correlation
from trading.venues.registry import tradeable

log = logging.getLogger(__name__)
Status = Opportunity.Status
RECORD_POLL_S = (0.0005, 0.05)  # the first and the longest wait between looks for a row not yet written


def execute_opportunity(opportunity_id: int) -> str:
    """Trade a dispatched opportunity at most once, or take over one left executing by a worker
    that is gone. Returns the opportunity's final status, or "not_claimed" when there was nothing
    for this worker to do. Everything it logs, and every task it sends, carries the
    opportunity's correlation id."""
    with correlation(opportunity_correlation(opportunity_id)), lifecycle.exclusive(opportunity_id) as lock:
        try:
            plan = _claim_once_recorded(opportunity_id, lock)
        except trade_store.Busy:
            log.info("opportunity %s is being executed by another worker", opportunity_id)
            return "not_claimed"
        except Exception as exc:
            if lock.held:
                lifecycle.fail_unsent(opportunity_id, f"error before any order: {type(exc).__name__}: {exc}")
            raise
        if isinstance(plan, Plan):
            return _settling(plan.opportunity, resuming=False, fresh=(plan.buy, plan.sell))
        if isinstance(plan, Dropped):
            return plan.status
        opportunity = lifecycle.take_over(opportunity_id)
        if opportunity is None:
            log.info("opportunity %s not claimable: already taken or not dispatched", opportunity_id)
            return "not_claimed"
        log.warning("opportunity %s was left executing: resuming it", opportunity_id)
        metrics.RESUMED.inc()
        return _settling(opportunity, resuming=True)


def _claim_once_recorded(opportunity_id: int, lock: trade_store.Lock) -> Plan | Dropped | None:
    """`claim_and_record`, waiting up to RECORD_WAIT_MS for the opportunity's row when the task
    came first; None (nothing claimed) when it never appears."""
    deadline = time.monotonic() + settings.RECORD_WAIT_MS / 1000
    pause, longest = RECORD_POLL_S
    while True:
        try:
            return claim_and_record(opportunity_id, lock)
        except trade_store.NotRecorded:
            if time.monotonic() >= deadline:
                log.warning("opportunity %s was never recorded: nothing to trade", opportunity_id)
                return None
            metrics.RECORD_WAITS.inc()
            time.sleep(pause)  # the row is usually a fraction of a millisecond behind; rarely never
            pause = min(pause * 2, longest)


def _settling(opportunity: Opportunity, *, resuming: bool, fresh: Sequence[Order] = ()) -> str:
    try:
        return settlement.settle(opportunity, resuming=resuming, fresh=fresh)
    except Exception as exc:
        settlement.interrupted(opportunity, exc)
        raise


@dataclass(frozen=True)
class Plan:
    """What the re-check decided to send: the opportunity, its trade as sized and the orders recorded
    for it."""

    opportunity: Opportunity
    sized: SizedTrade
    buy: Order
    sell: Order


@dataclass(frozen=True)
class Dropped:
    """Why the re-check sends nothing, and the status that says so (rejected or expired)."""

    status: str
    reason: str


def claim_and_record(opportunity_id: int, lock: trade_store.Lock | None = None) -> Plan | Dropped | None:
    """In one transaction: claim the dispatched opportunity (taking its `lock` in the same round
    trip when given; trade_store.claim), decide again, and either record its orders with their
    funds held (the Plan to send) or finish it untraded (Dropped). None when it was not
    dispatched. Only when this commits may its orders go out."""
    with transaction.atomic():
        claimed = trade_store.claim(opportunity_id, lock)
        if claimed is None:
            return None
        plan = recheck_and_record(claimed)
        if isinstance(plan, Dropped):
            lifecycle.finish(claimed.opportunity, plan.status, plan.reason)
    return plan


def recheck_and_record(claimed: trade_store.Claimed) -> Plan | Dropped:
    """Under the balance locks of both venues: decide again on the latest books less what other
    orders have taken from them, the ledger's balances and the limits, all read after the locks;
    if still accepted, reserve the liquidity, record both orders and hold their funds. Call
    inside the claim's transaction."""
    opportunity, config, guards = claimed.opportunity, claimed.strategy, claimed.guards
    rows = claimed.balances
    params, now = strategy_params(config), now_ms()
    age = now - to_ms(opportunity.detected_at)
    if age > params.ttl_ms:
        return Dropped(Status.EXPIRED, f"ttl_exceeded: {age} ms old, ttl {params.ttl_ms} ms")
    halted = risk_controls.halt_reason(guards)
    if halted is not None:
        return Dropped(Status.REJECTED, halted)
    names = (opportunity.buy_venue.name, opportunity.sell_venue.name)
    books = pubsub.latest_of(pubsub.shared(), opportunity.symbol, names)
    missing = [name for name in names if name not in books]
    if missing:
        return Dropped(Status.REJECTED, f"no_longer_profitable: no current book for {', '.join(missing)}")
    venues = _venue_states(opportunity, config, rows)
    if venues is None:
        return Dropped(
            Status.REJECTED, f"venue_unavailable: {', '.join(names)} must both trade {opportunity.mode}"
        )

    def decide(pipe: Pipeline, claims: list[book_claims.Claims]) -> SizedTrade | str:
        return _decide_and_reserve(pipe, opportunity, books, claims, venues, params, now, guards)

    sized = book_claims.transact(pubsub.shared(), [books[names[0]], books[names[1]]], decide)
    if isinstance(sized, str):
        return Dropped(Status.REJECTED, sized)
    return _record_orders(claimed, sized, rows)


def _venue_states(
    opportunity: Opportunity, config: StrategyConfig, rows: dict[tuple[int, str], Balance]
) -> dict[str, VenueState] | None:
    """Both venues as the strategy sees them, with the ledger's free balances; None unless both
    are enabled and can trade in the opportunity's mode."""
    states = {}
    for venue in (opportunity.buy_venue, opportunity.sell_venue):
        if not venue.enabled or not tradeable(venue, opportunity.mode):
            return None
        free = {asset: row.free for (venue_id, asset), row in rows.items() if venue_id == venue.pk}
        states[venue.name] = venue_state(venue, config, free)
    return states


def _decide_and_reserve(
    pipe: Pipeline,
    opportunity: Opportunity,
    books: dict[str, Quote],
    claims: list[book_claims.Claims],
    venues: dict[str, VenueState],
    params: StrategyParams,
    now: int,
    guards: trade_store.Guards,
) -> SizedTrade | str:
    """The re-check's decision on what is left of the books (queueing the reservation of what it
    takes on `pipe`), or the reason it is no longer traded."""
    claimant = str(opportunity.pk)
    buy_name, sell_name = opportunity.buy_venue.name, opportunity.sell_venue.name
    buy_left, sell_left = (
        liquidity.book_less(books[name], liquidity.others(c, claimant))
        for name, c in zip((buy_name, sell_name), claims, strict=True)
    )
    if buy_left is None or sell_left is None:
        return "no_longer_profitable: liquidity_taken"
    decision = evaluate_pair(buy_left, sell_left, venues[buy_name], venues[sell_name], params, now)
    if decision is None:
        return "no_longer_profitable: gap_closed"
    if not decision.accepted or decision.sized is None:
        return f"no_longer_profitable: {decision.reason}"
    sized = decision.sized
    violation = risk_controls.limit_violation(opportunity, sized, now, guards)
    if violation is not None:
        return violation
    pipe.multi()
    for book, available, mine, leg in zip(
        (books[buy_name], books[sell_name]),
        (buy_left, sell_left),
        claims,
        (sized.buy, sized.sell),
        strict=True,
    ):
        levels = available.asks if leg.side is Side.BUY else available.bids
        took = liquidity.taking(leg.side, fill(levels, leg.side, leg.amount, ZERO, limit=leg.worst_price))
        old = mine.get(claimant)
        book_claims.set_claim(
            pipe, book, claimant, old, Claim(reserved=took, filled=old.filled if old else {})
        )
    return sized


def _record_orders(
    claimed: trade_store.Claimed, sized: SizedTrade, rows: dict[tuple[int, str], Balance]
) -> Plan:
    """Both legs' orders (in one statement) and the holds on their funds (in another, in the same
    round trip)."""
    opportunity = claimed.opportunity
    legs = ((Role.BUY, opportunity.buy_venue, sized.buy), (Role.SELL, opportunity.sell_venue, sized.sell))
    made = [
        orders.new(
            opportunity,
            claimed.deployment,
            role=role,
            attempt=0,
            venue=venue,
            side=leg.side,
            amount=leg.amount,
            limit=leg.worst_price,
        )
        for role, venue, leg in legs
    ]
    holds = [held for _, held in made]
    venues = {venue.name: venue for _, venue, _ in legs}
    held = trade_store.holding(rows, venues, holds)
    trade_store.insert([order for order, _ in made], then=[held] if held else [], prepared=True)
    if held is None:
        balances.apply(holds, venues.values())
    return Plan(opportunity, sized, made[0][0], made[1][0])
