"""Executing a dispatched opportunity: claim it, re-check it, reserve funds and record its
orders; trading.settlement then sends the legs and records the outcome, in paper and live alike.

A task redelivered after its worker died between recording the orders and finishing them resumes
the trade: settlement looks each recorded order up before it sends anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction

from trading import legs, pubsub, risk, settlement
from trading.config import active_strategy, load_venue_states, now_ms, strategy_params, to_ms, trading_mode
from trading.core.strategy import evaluate_pair
from trading.core.types import Leg, Quote, Side, VenueState, split_symbol
from trading.core.types import Opportunity as Sized
from trading.models import Balance, Opportunity, Order, StrategyConfig, Venue
from trading.observability.logs import correlation, opportunity_correlation
from trading.settlement import finish
from trading.venues.base import VenueError

log = logging.getLogger(__name__)
Status = Opportunity.Status


def claim(opportunity_id: int) -> Opportunity | None:
    """Move a dispatched opportunity to executing; None when someone else already has it."""
    claimed = Opportunity.objects.filter(pk=opportunity_id, status=Status.DISPATCHED).update(
        status=Status.EXECUTING
    )
    if not claimed:
        return None
    return Opportunity.objects.select_related("buy_venue", "sell_venue", "strategy").get(pk=opportunity_id)


def execute_opportunity(opportunity_id: int) -> str:
    """Trade a dispatched opportunity at most once. Returns the opportunity's final status, or
    "not_claimed" when it was not (or no longer) waiting for execution. Everything it logs, and
    every task it sends, carries the opportunity's correlation id."""
    with correlation(opportunity_correlation(opportunity_id)):
        return _claim_and_execute(opportunity_id)


ADVISORY_LOCKS = 0x4152  # the namespace of our PostgreSQL advisory locks: one per opportunity


@contextmanager
def exclusive(opportunity_id: int) -> Iterator[bool]:
    """Whether this process holds the opportunity's session lock, released on exit. PostgreSQL
    drops it with the connection of a killed worker, so a redelivered task gets it then, but
    never while the first one still runs. Without PostgreSQL (the quick SQLite demo, paper only)
    the conditional claim alone keeps a task from trading twice."""
    if not _advisory_locks():
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_LOCKS, opportunity_id])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCKS, opportunity_id])


def _claim_and_execute(opportunity_id: int) -> str:
    with exclusive(opportunity_id) as held:
        if not held:
            log.info("opportunity %s is being executed by another worker", opportunity_id)
            return "not_claimed"
        opportunity = claim(opportunity_id)
        if opportunity is None and not _advisory_locks():
            # Without the lock, a worker still running could not be told from a dead one.
            log.info("opportunity %s already claimed; not resumed without PostgreSQL", opportunity_id)
            return "not_claimed"
        if opportunity is None:
            return _resume(opportunity_id)
        return _guarded(opportunity, _execute)


def _advisory_locks() -> bool:
    return connection.vendor == "postgresql"


def _guarded(opportunity: Opportunity, run: Callable[[Opportunity], str]) -> str:
    try:
        return run(opportunity)
    except Exception as exc:
        finish(opportunity, Status.FAILED, f"error: {type(exc).__name__}: {exc}")
        raise


def _resume(opportunity_id: int) -> str:
    """An opportunity left executing with orders recorded is one whose worker died between
    recording and finishing its legs: complete or unwind it now. Anything else is not ours."""
    opportunity = (
        Opportunity.objects.filter(pk=opportunity_id, status=Status.EXECUTING, orders__isnull=False)
        .select_related("buy_venue", "sell_venue", "strategy")
        .first()
    )
    if opportunity is None:
        log.info("opportunity %s not claimable: already taken or not dispatched", opportunity_id)
        return "not_claimed"
    log.warning("opportunity %s was left executing: resuming its legs", opportunity_id)
    expected = opportunity.expected_profit or Decimal(0)
    return _guarded(opportunity, lambda opp: settlement.complete(opp, expected, resuming=True))


@dataclass(frozen=True)
class Plan:
    """What the re-check decided to send: the sized opportunity and the orders recorded for it."""

    sized: Sized
    buy: Order
    sell: Order


def _execute(opportunity: Opportunity) -> str:
    config = opportunity.strategy or active_strategy()
    params = strategy_params(config)
    now = now_ms()
    age = now - to_ms(opportunity.detected_at)
    if age > params.ttl_ms:
        return finish(opportunity, Status.EXPIRED, f"ttl_exceeded: {age} ms old, ttl {params.ttl_ms} ms")
    books = pubsub.latest_books(pubsub.connect(), opportunity.symbol)
    live = trading_mode() == "live"
    # Before funds are reserved: a venue we cannot reach holds none.
    try:
        facts = asyncio.run(_venue_facts(opportunity)) if live else {}
    except VenueError as exc:
        return finish(opportunity, Status.REJECTED, f"venue_unavailable: {exc}")
    with transaction.atomic():
        plan_or_reason = _recheck_and_reserve(opportunity, config, books, now, facts)
    if isinstance(plan_or_reason, str):
        return finish(opportunity, Status.REJECTED, plan_or_reason)
    return settlement.complete(opportunity, plan_or_reason.sized.net_profit, resuming=False)


Facts = dict[str, legs.VenueFacts]


async def _venue_facts(opportunity: Opportunity) -> Facts:
    """Each venue's fresh free balances, market rules and fee tier, read from both at once."""
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    read = await asyncio.gather(*(legs.venue_facts(venue, opportunity.symbol) for venue in venues))
    return {venue.name: facts for venue, facts in zip(venues, read, strict=True)}


def _with_facts(venues: dict[str, VenueState], facts: Facts) -> dict[str, VenueState]:
    """The venue states with what the venues themselves said replacing the record's balances
    and rules, so sizing respects their real funds, minimums and precision. (Their fee tiers are
    recorded on the venues first, by _adopt_fee_tiers, and loaded with the states.)"""
    updated = dict(venues)
    for name, said in facts.items():
        if name in updated:
            updated[name] = dataclasses.replace(updated[name], balances=said.balances, rules=said.rules)
    return updated


def _adopt_fee_tiers(opportunity: Opportunity, facts: Facts) -> None:
    """Record each venue's taker fee as the venue stated it, where it differs from the record's:
    the admin then shows the fee trades pay, and reservations hold enough for it."""
    for venue in (opportunity.buy_venue, opportunity.sell_venue):
        said = facts.get(venue.name)
        if said is None or said.taker_fee == venue.taker_fee:
            continue
        log.warning(
            "%s: the account's taker fee is %s, not the recorded %s: recording the venue's",
            venue.name,
            said.taker_fee,
            venue.taker_fee,
        )
        Venue.objects.filter(pk=venue.pk).update(taker_fee=said.taker_fee)
        venue.taker_fee = said.taker_fee


def _recheck_and_reserve(
    opportunity: Opportunity,
    config: StrategyConfig,
    books: dict[str, Quote],
    now: int,
    facts: Facts | None = None,
) -> Plan | str:
    """Under row locks on both venues' balances: decide again on the latest books and balances
    (and, live, the venues' own `facts`), and if still accepted, record both orders and reserve
    their funds. Returns the plan or the reason it was dropped."""
    buy_name, sell_name = opportunity.buy_venue.name, opportunity.sell_venue.name
    _lock_balances(opportunity.buy_venue, opportunity.sell_venue)
    _adopt_fee_tiers(opportunity, facts or {})
    halted = risk.halt_reason()
    if halted is not None:
        return halted
    venues = _with_facts(load_venue_states(config), facts or {})
    missing = [name for name in (buy_name, sell_name) if name not in books or name not in venues]
    if missing:
        return f"no_longer_profitable: no current book for {', '.join(missing)}"
    decision = evaluate_pair(
        books[buy_name], books[sell_name], venues[buy_name], venues[sell_name], strategy_params(config), now
    )
    if decision is None:
        return "no_longer_profitable: gap_closed"
    if not decision.accepted or decision.opportunity is None:
        return f"no_longer_profitable: {decision.reason}"
    sized = decision.opportunity
    violation = risk.limit_violation(opportunity, sized, now)
    if violation is not None:
        return violation
    buy = _order(opportunity, opportunity.buy_venue, sized.buy)
    sell = _order(opportunity, opportunity.sell_venue, sized.sell)
    base, quote = split_symbol(opportunity.symbol)
    settlement.move(opportunity.buy_venue, quote, free=-buy.held, locked=buy.held)
    settlement.move(opportunity.sell_venue, base, free=-sell.held, locked=sell.held)
    return Plan(sized, buy, sell)


def _lock_balances(*venues: Venue) -> None:
    """Serialise trades that touch the same venues, in a fixed order so two cannot deadlock."""
    list(Balance.objects.select_for_update().filter(venue__in=venues).order_by("pk"))


def _order(opportunity: Opportunity, venue: Venue, leg: Leg) -> Order:
    """The leg's order, recorded with what it holds back: a buy its amount at the guard price
    with the venue's taker fee, a sale its amount. Deterministic client order ids with a unique
    constraint: a leg can be recorded only once."""
    held = leg.amount * leg.worst_price * (1 + venue.taker_fee) if leg.side is Side.BUY else leg.amount
    order, _ = Order.objects.get_or_create(
        client_order_id=settlement.first_id(opportunity, leg.side.value),
        defaults={
            "opportunity": opportunity,
            "venue": venue,
            "symbol": opportunity.symbol,
            "side": leg.side.value,
            "price": leg.worst_price,
            "amount": leg.amount,
            "held": held,
        },
    )
    return order
