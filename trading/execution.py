"""Executing a dispatched opportunity: claim it, re-check it, reserve funds, send both legs, record.

Paper and live share the claim, the re-check, the reservation and the record. Live legs also
confirm fills by polling, retry a missing quantity within the price guard, hedge back what stays
one-sided, and survive a worker killed between the legs: the redelivered task finds the orders
already sent and completes or unwinds the trade.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from trading import legs, monitoring, pubsub, risk
from trading.config import (
    active_strategy,
    load_venue_states,
    now_ms,
    strategy_params,
    to_ms,
    trading_mode,
)
from trading.core.risk import plain
from trading.core.strategy import evaluate_pair
from trading.core.types import Leg, MarketRules, Quote, Side, VenueState, split_symbol
from trading.core.types import Opportunity as Sized
from trading.models import Balance, Opportunity, Order, StrategyConfig, Trade, Venue
from trading.notify import rules as notify_rules
from trading.observability import metrics
from trading.observability.logs import correlation, opportunity_correlation
from trading.venues.base import Gateway, OrderRequest, OrderResult, VenueError
from trading.venues.registry import order_gateway

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


def finish(opportunity: Opportunity, status: str, reason: str) -> str:
    finished = Opportunity.objects.filter(pk=opportunity.pk, status=Status.EXECUTING).update(
        status=status, reason=reason[:200]
    )
    metrics.OPPORTUNITIES.labels(status=status).inc(finished)
    log.info("opportunity %s %s: %s", opportunity.pk, status, reason)
    return status


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
    if connection.vendor != "postgresql":
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
        if opportunity is None:
            return _resume(opportunity_id)
        return _guarded(opportunity, _execute)


def _guarded(opportunity: Opportunity, run: Callable[[Opportunity], str]) -> str:
    try:
        return run(opportunity)
    except Exception as exc:
        finish(opportunity, Status.FAILED, f"error: {type(exc).__name__}: {exc}")
        raise


def _resume(opportunity_id: int) -> str:
    """A live opportunity left executing with orders recorded is one whose worker died between
    recording and finishing its legs: complete or unwind it now. Anything else is not ours."""
    opportunity = (
        Opportunity.objects.filter(pk=opportunity_id, status=Status.EXECUTING, orders__isnull=False)
        .select_related("buy_venue", "sell_venue", "strategy")
        .first()
    )
    if opportunity is None or trading_mode() != "live":
        log.info("opportunity %s not claimable: already taken or not dispatched", opportunity_id)
        return "not_claimed"
    log.warning("opportunity %s was left executing: resuming its legs", opportunity_id)
    return _guarded(opportunity, lambda opp: _complete_live(opp, opp.expected_profit or Decimal(0), True))


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
    gateways = {} if live else _gateways(opportunity)
    with transaction.atomic():
        plan_or_reason = _recheck_and_reserve(opportunity, config, books, now, facts)
    if isinstance(plan_or_reason, str):
        return finish(opportunity, Status.REJECTED, plan_or_reason)
    if live:
        return _complete_live(opportunity, plan_or_reason.sized.net_profit, False)
    results = asyncio.run(_send_legs(gateways, plan_or_reason))
    with transaction.atomic():
        status = _record(opportunity, plan_or_reason, results)
    return status


Facts = dict[str, tuple[dict[str, Decimal], MarketRules]]


async def _venue_facts(opportunity: Opportunity) -> Facts:
    """Each venue's fresh free balances and market rules, read from both venues at once."""
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    read = await asyncio.gather(*(legs.venue_facts(venue, opportunity.symbol) for venue in venues))
    return {venue.name: facts for venue, facts in zip(venues, read, strict=True)}


def _with_facts(venues: dict[str, VenueState], facts: Facts) -> dict[str, VenueState]:
    """The venue states with what the venues themselves said replacing the record's balances
    and rules, so sizing respects their real funds, minimums and precision."""
    updated = dict(venues)
    for name, (balances, rules) in facts.items():
        if name in updated:
            updated[name] = dataclasses.replace(updated[name], balances=balances, rules=rules)
    return updated


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
    _move(opportunity.buy_venue, quote, free=-_reserve(buy), locked=_reserve(buy))
    _move(opportunity.sell_venue, base, free=-sell.amount, locked=sell.amount)
    return Plan(sized, buy, sell)


def _lock_balances(*venues: Venue) -> None:
    """Serialise trades that touch the same venues, in a fixed order so two cannot deadlock."""
    list(Balance.objects.select_for_update().filter(venue__in=venues).order_by("pk"))


def _reserve(order: Order) -> Decimal:
    """Quote currency held back for a buy: its amount at the guard price, fee included."""
    return order.amount * order.price * (1 + order.venue.taker_fee)


def _first_id(opportunity: Opportunity, side: str) -> str:
    return f"arb{opportunity.pk}-{side}"


def _order(opportunity: Opportunity, venue: Venue, leg: Leg) -> Order:
    # Deterministic client order ids with a unique constraint: a leg can be recorded only once.
    order, _ = Order.objects.get_or_create(
        client_order_id=_first_id(opportunity, leg.side.value),
        defaults={
            "opportunity": opportunity,
            "venue": venue,
            "symbol": opportunity.symbol,
            "side": leg.side.value,
            "price": leg.worst_price,
            "amount": leg.amount,
        },
    )
    return order


def _move(venue: Venue, asset: str, *, free: Decimal, locked: Decimal = Decimal(0)) -> None:
    Balance.objects.get_or_create(venue=venue, asset=asset)
    Balance.objects.filter(venue=venue, asset=asset).update(
        free=F("free") + free, locked=F("locked") + locked
    )


def _gateways(opportunity: Opportunity) -> dict[str, Gateway]:
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    return {venue.name: order_gateway(venue, "paper") for venue in venues}


async def _send_legs(gateways: dict[str, Gateway], plan: Plan) -> list[OrderResult | BaseException]:
    """Both legs at once; an exception is returned in place of the leg that raised it."""
    sends = [gateways[order.venue.name].create_order(_request(order)) for order in (plan.buy, plan.sell)]
    try:
        return await asyncio.gather(*sends, return_exceptions=True)
    finally:
        await asyncio.gather(*(gw.close() for gw in gateways.values()))


def _request(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=Side(order.side),
        amount=order.amount,
        price=order.price,
        client_order_id=order.client_order_id,
    )


def _record(opportunity: Opportunity, plan: Plan, results: list[OrderResult | BaseException]) -> str:
    buy_result, sell_result = results
    _save_order(plan.buy, buy_result)
    _save_order(plan.sell, sell_result)
    _settle(plan.buy)
    _settle(plan.sell)
    if plan.buy.filled < plan.buy.amount or plan.sell.filled < plan.sell.amount:
        # Unwinding a one-sided fill belongs to live execution; on record it stays visible as failed.
        transaction.on_commit(lambda: notify_rules.leg_failed(opportunity.pk))
        return finish(
            opportunity,
            Status.FAILED,
            f"leg failure: bought {plan.buy.filled} of {plan.buy.amount}, "
            f"sold {plan.sell.filled} of {plan.sell.amount}",
        )
    trade = _trade(opportunity, plan)
    transaction.on_commit(lambda: _announce(trade))
    risk.enforce_daily_loss()
    return finish(opportunity, Status.EXECUTED, "both legs filled")


def _save_order(order: Order, result: OrderResult | BaseException) -> None:
    if isinstance(result, BaseException):
        log.warning("order %s failed: %s", order.client_order_id, result)
        order.status = Order.Status.REJECTED
        order.raw = {"error": f"{type(result).__name__}: {result}"}
    else:
        order.venue_order_id = result.venue_order_id
        order.status = result.status
        order.filled = result.filled
        order.average_price = result.average_price
        order.fee = result.fee
        order.raw = result.raw
        log.info(
            "order %s %s on %s: filled %s of %s at %s",
            order.client_order_id,
            order.status,
            order.venue.name,
            order.filled,
            order.amount,
            order.average_price,
        )
    order.save()


def _settle(order: Order) -> None:
    _release(order)
    _apply_fills(order)


def _release(order: Order) -> None:
    """Give back what the re-check reserved for a first leg."""
    base, quote = split_symbol(order.symbol)
    held, asset = (_reserve(order), quote) if order.side == Order.Side.BUY else (order.amount, base)
    _move(order.venue, asset, free=held, locked=-held)


def _apply_fills(order: Order) -> None:
    """Move the ledger by what the order filled: the fee is paid in the quote currency."""
    base, quote = split_symbol(order.symbol)
    value = order.filled * (order.average_price or 0)
    if order.side == Order.Side.BUY:
        _move(order.venue, quote, free=-(value + order.fee))
        _move(order.venue, base, free=order.filled)
    else:
        _move(order.venue, base, free=-order.filled)
        _move(order.venue, quote, free=value - order.fee)


def _trade(opportunity: Opportunity, plan: Plan) -> Trade:
    buy, sell = plan.buy, plan.sell
    fees = buy.fee + sell.fee
    realized = sell.filled * sell.average_price - buy.filled * buy.average_price - fees
    log.info(
        "trade of opportunity %s: %s %s, realized pnl %s",
        opportunity.pk,
        buy.filled,
        opportunity.symbol,
        realized,
    )
    return Trade.objects.create(
        opportunity=opportunity,
        symbol=opportunity.symbol,
        buy_venue=buy.venue,
        sell_venue=sell.venue,
        amount=buy.filled,
        expected_pnl=plan.sized.net_profit,
        realized_pnl=realized,
        fees=fees,
        mode="paper",
    )


def _announce(trade: Trade) -> None:
    pubsub.publish_event(
        pubsub.connect(),
        pubsub.names().trade_events,
        {
            "trade": trade.pk,
            "opportunity": trade.opportunity_id,
            "symbol": trade.symbol,
            "buy_venue": trade.buy_venue.name,
            "sell_venue": trade.sell_venue.name,
            "amount": str(trade.amount),
            "expected_pnl": str(trade.expected_pnl),
            "realized_pnl": str(trade.realized_pnl),
            "fees": str(trade.fees),
        },
    )
    notify_rules.trade_executed(trade)


# --- live legs ------------------------------------------------------------------------------------


def _complete_live(opportunity: Opportunity, expected: Decimal, resuming: bool) -> str:
    """Confirm the recorded legs (both at once; when `resuming`, each looked up on its venue
    before it is sent), retry what is missing, hedge what stays one-sided, then record the trade
    or the failure."""
    _confirm(list(opportunity.orders.filter(status=Order.Status.NEW)), look_first=resuming)
    for side in Order.Side:
        _retry_missing(opportunity, side)
    return _net_out(opportunity, expected)


def _confirm(orders: list[Order], *, look_first: bool) -> None:
    """Send or find each order on its venue, all at once, and record the outcomes."""

    sends = [(order.venue, _request(order)) for order in orders]  # the record is read here, not in the loop

    async def confirm_all() -> list[OrderResult | BaseException]:
        confirmations = [
            legs.on_venue(venue, lambda gw, r=request: legs.confirmed(gw, r, look_first=look_first))
            for venue, request in sends
        ]
        return await asyncio.gather(*confirmations, return_exceptions=True)

    results = asyncio.run(confirm_all())
    with transaction.atomic():
        for order, result in zip(orders, results, strict=True):
            _save_order(order, result)
            if order.client_order_id == _first_id(order.opportunity, order.side):
                _release(order)
            _apply_fills(order)


def _leg_orders(opportunity: Opportunity, side: str) -> list[Order]:
    """The first order of a leg and its retries, oldest first."""
    first = _first_id(opportunity, side)
    orders = Order.objects.filter(opportunity=opportunity, client_order_id__startswith=first)
    return list(orders.select_related("venue", "opportunity").order_by("pk"))


def _filled(orders: list[Order]) -> Decimal:
    return sum((order.filled for order in orders), Decimal(0))


def _retry_missing(opportunity: Opportunity, side: str) -> None:
    """Send what a leg still misses, within its guard price, up to LIVE_LEG_RETRIES times; each
    attempt is its own order (client order id suffixed -r1, -r2, ...). A retry already recorded
    by a worker that died is looked up before anything is sent."""
    for attempt in range(1, settings.LIVE_LEG_RETRIES + 1):
        orders = _leg_orders(opportunity, side)
        first = orders[0]
        missing = first.amount - _filled(orders)
        if missing <= 0:
            return
        if attempt == 1:
            _alert(
                f"leg_retry:{opportunity.pk}",
                monitoring.WARNING,
                f"{first} filled {plain(_filled(orders))} of {plain(first.amount)}: retrying",
            )
        retry, created = Order.objects.get_or_create(
            client_order_id=f"{first.client_order_id}-r{attempt}",
            defaults={
                "opportunity": opportunity,
                "venue": first.venue,
                "symbol": first.symbol,
                "side": side,
                "price": first.price,
                "amount": missing,
            },
        )
        if retry.status == Order.Status.NEW:
            _confirm([retry], look_first=not created)


def _net_out(opportunity: Opportunity, expected: Decimal) -> str:
    bought = _filled(_leg_orders(opportunity, Order.Side.BUY))
    sold = _filled(_leg_orders(opportunity, Order.Side.SELL))
    if bought == sold and bought > 0:
        with transaction.atomic():
            trade = _live_trade(opportunity, expected)
            transaction.on_commit(lambda: _announce(trade))
            risk.enforce_daily_loss()
            return finish(opportunity, Status.EXECUTED, "both legs filled")
    hedged = _hedge(opportunity, bought - sold) if bought != sold else Decimal(0)
    with transaction.atomic():
        transaction.on_commit(lambda: notify_rules.leg_failed(opportunity.pk))
        return finish(
            opportunity, Status.FAILED, f"leg failure: bought {bought}, sold {sold}, hedged {hedged}"
        )


def _hedge(opportunity: Opportunity, excess: Decimal) -> Decimal:
    """Close a one-sided fill on the venue where it filled (the opposite side, immediate or
    cancel, no worse than LIVE_HEDGE_MAX_LOSS_BPS off its fill price). Returns what the hedge
    closed; what it could not close opens a critical alert."""
    side = Order.Side.BUY if excess > 0 else Order.Side.SELL
    filled = _leg_orders(opportunity, side)
    hedge, created = Order.objects.get_or_create(
        client_order_id=f"arb{opportunity.pk}-hedge",
        defaults={
            "opportunity": opportunity,
            "venue": filled[0].venue,
            "symbol": opportunity.symbol,
            "side": Order.Side.SELL if excess > 0 else Order.Side.BUY,
            "price": _hedge_limit(filled, side),
            "amount": abs(excess),
        },
    )
    if hedge.status == Order.Status.NEW:
        _confirm([hedge], look_first=not created)
        hedge.refresh_from_db()
    left = abs(excess) - hedge.filled
    severity = monitoring.CRITICAL if left > 0 else monitoring.WARNING
    _alert(
        f"leg_hedge:{opportunity.pk}",
        severity,
        f"{hedge}: hedged {plain(hedge.filled)} of {plain(abs(excess))} {opportunity.symbol} "
        f"on {hedge.venue.name}, {plain(left)} left open",
    )
    return hedge.filled


def _hedge_limit(filled: list[Order], side: str) -> Decimal:
    """The worst price the hedge may take: the filled side's average price moved against us by
    LIVE_HEDGE_MAX_LOSS_BPS, rounded inward onto the guard price's tick."""
    value = sum((order.filled * (order.average_price or 0) for order in filled), Decimal(0))
    average = value / _filled(filled)
    loss = Decimal(settings.LIVE_HEDGE_MAX_LOSS_BPS) / Decimal(10_000)
    tick = Decimal(1).scaleb(min(filled[0].price.normalize().as_tuple().exponent, 0))
    if side == Order.Side.BUY:  # we sell back what we bought: no lower than this
        return (average * (1 - loss)).quantize(tick, rounding=ROUND_UP)
    return (average * (1 + loss)).quantize(tick, rounding=ROUND_DOWN)


def _alert(key: str, severity: str, subject: str) -> None:
    with transaction.atomic():
        monitoring.raise_alert(monitoring.Condition(key, severity, subject[:200]), timezone.now())


def _live_trade(opportunity: Opportunity, expected: Decimal) -> Trade:
    buys, sells = _leg_orders(opportunity, Order.Side.BUY), _leg_orders(opportunity, Order.Side.SELL)
    value = {
        side: sum((o.filled * (o.average_price or 0) for o in orders), Decimal(0))
        for side, orders in (("buy", buys), ("sell", sells))
    }
    fees = sum((order.fee for order in buys + sells), Decimal(0))
    realized = value["sell"] - value["buy"] - fees
    log.info(
        "live trade of opportunity %s: %s %s, realized pnl %s",
        opportunity.pk,
        _filled(buys),
        opportunity.symbol,
        realized,
    )
    return Trade.objects.create(
        opportunity=opportunity,
        symbol=opportunity.symbol,
        buy_venue=opportunity.buy_venue,
        sell_venue=opportunity.sell_venue,
        amount=_filled(buys),
        expected_pnl=expected,
        realized_pnl=realized,
        fees=fees,
        mode="live",
    )
