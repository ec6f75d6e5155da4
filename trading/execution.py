"""Executing a dispatched opportunity: claim it, re-check it, reserve funds, send both legs, record.

On paper everything here is the live path; only the gateway differs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import F

from trading import pubsub, risk
from trading.config import (
    active_strategy,
    load_venue_states,
    now_ms,
    strategy_params,
    to_ms,
    trading_mode,
)
from trading.core.strategy import evaluate_pair
from trading.core.types import Leg, Quote, Side, split_symbol
from trading.core.types import Opportunity as Sized
from trading.models import Balance, Opportunity, Order, StrategyConfig, Trade, Venue
from trading.notify import rules as notify_rules
from trading.observability import metrics
from trading.observability.logs import correlation, opportunity_correlation
from trading.venues.base import Gateway, OrderRequest, OrderResult, VenueError
from trading.venues.paper import PaperGateway

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


def _claim_and_execute(opportunity_id: int) -> str:
    opportunity = claim(opportunity_id)
    if opportunity is None:
        log.info("opportunity %s not claimable: already taken or not dispatched", opportunity_id)
        return "not_claimed"
    try:
        return _execute(opportunity)
    except Exception as exc:
        finish(opportunity, Status.FAILED, f"error: {type(exc).__name__}: {exc}")
        raise


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
    gateways = _gateways(opportunity)  # before funds are reserved: a venue we cannot reach holds none
    with transaction.atomic():
        plan_or_reason = _recheck_and_reserve(opportunity, config, books, now)
    if isinstance(plan_or_reason, str):
        return finish(opportunity, Status.REJECTED, plan_or_reason)
    results = asyncio.run(_send_legs(gateways, plan_or_reason))
    with transaction.atomic():
        status = _record(opportunity, plan_or_reason, results)
    return status


def _recheck_and_reserve(
    opportunity: Opportunity, config: StrategyConfig, books: dict[str, Quote], now: int
) -> Plan | str:
    """Under row locks on both venues' balances: decide again on the latest books and balances,
    and if still accepted, record both orders and reserve their funds. Returns the plan or the
    reason it was dropped."""
    buy_name, sell_name = opportunity.buy_venue.name, opportunity.sell_venue.name
    _lock_balances(opportunity.buy_venue, opportunity.sell_venue)
    halted = risk.halt_reason()
    if halted is not None:
        return halted
    venues = load_venue_states(config)
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


def _order(opportunity: Opportunity, venue: Venue, leg: Leg) -> Order:
    # Deterministic client order ids with a unique constraint: a leg can be recorded only once.
    order, _ = Order.objects.get_or_create(
        client_order_id=f"arb{opportunity.pk}-{leg.side.value}",
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
    mode = trading_mode()
    if mode != "paper":
        raise VenueError(f"no order gateway for mode {mode}")
    return {venue.name: _paper_gateway(venue) for venue in (opportunity.buy_venue, opportunity.sell_venue)}


def _paper_gateway(venue: Venue) -> PaperGateway:
    """Fills against the venue's latest published book at the moment the order is placed."""
    client = pubsub.connect()

    def book_for(symbol: str) -> Quote:
        books = pubsub.latest_books(client, symbol)
        if venue.name not in books:
            raise VenueError(f"{venue.name}: no current {symbol} book to fill against")
        return books[venue.name]

    return PaperGateway(venue.name, venue.taker_fee, book_for)


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
    _settle_buy(plan.buy)
    _settle_sell(plan.sell)
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


def _settle_buy(order: Order) -> None:
    base, quote = split_symbol(order.symbol)
    reserved = _reserve(order)
    spent = order.filled * (order.average_price or 0) + order.fee
    _move(order.venue, quote, free=reserved - spent, locked=-reserved)
    _move(order.venue, base, free=order.filled)


def _settle_sell(order: Order) -> None:
    base, quote = split_symbol(order.symbol)
    received = order.filled * (order.average_price or 0) - order.fee
    _move(order.venue, base, free=order.amount - order.filled, locked=-order.amount)
    _move(order.venue, quote, free=received)


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
        mode=trading_mode(),
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
