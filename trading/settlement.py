"""Completing a trade whose orders are recorded and funds reserved: send (or find again) both
legs at once, retry what a leg misses, hedge back what stays one-sided, and record the outcome.

Paper and live take this same path; only the gateway differs (trading.venues.registry). Every
step reads the record first, so a task redelivered after its worker died picks up where that
worker stopped and never sends an order twice.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from trading import legs, monitoring, pubsub, risk
from trading.config import trading_mode
from trading.core.fills import guard_price, tick_of
from trading.core.risk import plain
from trading.core.types import Side, split_symbol
from trading.models import Balance, Opportunity, Order, Trade, Venue
from trading.notify import rules as notify_rules
from trading.observability import metrics
from trading.venues.base import OrderRequest, OrderResult

log = logging.getLogger(__name__)
Status = Opportunity.Status


def finish(opportunity: Opportunity, status: str, reason: str) -> str:
    finished = Opportunity.objects.filter(pk=opportunity.pk, status=Status.EXECUTING).update(
        status=status, reason=reason[:200]
    )
    metrics.OPPORTUNITIES.labels(status=status).inc(finished)
    log.info("opportunity %s %s: %s", opportunity.pk, status, reason)
    return status


def complete(opportunity: Opportunity, expected: Decimal, *, resuming: bool) -> str:
    """Confirm the recorded legs (both at once; when `resuming`, each looked up on its venue
    before it is sent), retry what is missing, hedge what stays one-sided, then record the trade
    (expecting `expected` profit) or the failure. Returns the opportunity's final status."""
    mode = trading_mode()  # one mode for every order of the trade, read once
    _confirm(list(opportunity.orders.filter(status=Order.Status.NEW)), mode, look_first=resuming)
    for side in Order.Side:
        _retry_missing(opportunity, side, mode)
    return _net_out(opportunity, expected, mode)


def first_id(opportunity: Opportunity, side: str) -> str:
    return f"arb{opportunity.pk}-{side}"


def move(venue: Venue, asset: str, *, free: Decimal, locked: Decimal = Decimal(0)) -> None:
    Balance.objects.get_or_create(venue=venue, asset=asset)
    Balance.objects.filter(venue=venue, asset=asset).update(
        free=F("free") + free, locked=F("locked") + locked
    )


def as_request(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=Side(order.side),
        amount=order.amount,
        price=order.price,
        client_order_id=order.client_order_id,
    )


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


def _release(order: Order) -> None:
    """Give back exactly what the re-check held back for the order (nothing for a retry or a
    hedge, which hold nothing)."""
    if order.held:
        base, quote = split_symbol(order.symbol)
        move(
            order.venue, quote if order.side == Order.Side.BUY else base, free=order.held, locked=-order.held
        )


def _apply_fills(order: Order) -> None:
    """Move the ledger by what the order filled: the fee is paid in the quote currency."""
    base, quote = split_symbol(order.symbol)
    value = order.filled * (order.average_price or 0)
    if order.side == Order.Side.BUY:
        move(order.venue, quote, free=-(value + order.fee))
        move(order.venue, base, free=order.filled)
    else:
        move(order.venue, base, free=-order.filled)
        move(order.venue, quote, free=value - order.fee)


def _confirm(orders: list[Order], mode: str, *, look_first: bool) -> None:
    """Send or find each order on its venue, all at once, and record the outcomes."""

    sends = [(order.venue, as_request(order)) for order in orders]  # the record is read here, not in the loop

    async def confirm_all() -> list[OrderResult | BaseException]:
        confirmations = [
            legs.on_venue(venue, mode, lambda gw, r=request: legs.confirmed(gw, r, look_first=look_first))
            for venue, request in sends
        ]
        return await asyncio.gather(*confirmations, return_exceptions=True)

    results = asyncio.run(confirm_all())
    with transaction.atomic():
        for order, result in zip(orders, results, strict=True):
            _save_order(order, result)
            _release(order)
            _apply_fills(order)


def _leg_orders(opportunity: Opportunity, side: str) -> list[Order]:
    """The first order of a leg and its retries, oldest first."""
    first = first_id(opportunity, side)
    orders = Order.objects.filter(opportunity=opportunity, client_order_id__startswith=first)
    return list(orders.select_related("venue", "opportunity").order_by("pk"))


def _filled(orders: list[Order]) -> Decimal:
    return sum((order.filled for order in orders), Decimal(0))


def _retry_missing(opportunity: Opportunity, side: str, mode: str) -> None:
    """Send what a leg still misses, within its guard price, up to LEG_RETRIES times; each
    attempt is its own order (client order id suffixed -r1, -r2, ...). A retry already recorded
    by a worker that died is looked up before anything is sent."""
    for attempt in range(1, settings.LEG_RETRIES + 1):
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
            _confirm([retry], mode, look_first=not created)


def _net_out(opportunity: Opportunity, expected: Decimal, mode: str) -> str:
    bought = _filled(_leg_orders(opportunity, Order.Side.BUY))
    sold = _filled(_leg_orders(opportunity, Order.Side.SELL))
    if bought == sold and bought > 0:
        with transaction.atomic():
            trade = _trade(opportunity, expected, mode)
            transaction.on_commit(lambda: _announce(trade))
            risk.enforce_daily_loss()
            return finish(opportunity, Status.EXECUTED, "both legs filled")
    hedged = _hedge(opportunity, bought - sold, mode) if bought != sold else Decimal(0)
    with transaction.atomic():
        transaction.on_commit(lambda: notify_rules.leg_failed(opportunity.pk))
        return finish(
            opportunity,
            Status.FAILED,
            f"leg failure: bought {plain(bought)}, sold {plain(sold)}, hedged {plain(hedged)}",
        )


def _hedge(opportunity: Opportunity, excess: Decimal, mode: str) -> Decimal:
    """Close a one-sided fill on the venue where it filled (the opposite side, immediate or
    cancel, no worse than HEDGE_MAX_LOSS_BPS off its fill price). Returns what the hedge
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
        _confirm([hedge], mode, look_first=not created)
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
    HEDGE_MAX_LOSS_BPS, rounded inward onto the guard price's tick."""
    value = sum((order.filled * (order.average_price or 0) for order in filled), Decimal(0))
    average = value / _filled(filled)
    hedge_side = Side.SELL if side == Order.Side.BUY else Side.BUY  # sell back what we bought
    loss = Decimal(settings.HEDGE_MAX_LOSS_BPS)
    return guard_price(average, hedge_side, loss, tick_of(filled[0].price))


def _alert(key: str, severity: str, subject: str) -> None:
    with transaction.atomic():
        monitoring.raise_alert(monitoring.Condition(key, severity, subject[:200]), timezone.now())


def _trade(opportunity: Opportunity, expected: Decimal, mode: str) -> Trade:
    buys, sells = _leg_orders(opportunity, Order.Side.BUY), _leg_orders(opportunity, Order.Side.SELL)
    value = {
        side: sum((o.filled * (o.average_price or 0) for o in orders), Decimal(0))
        for side, orders in (("buy", buys), ("sell", sells))
    }
    fees = sum((order.fee for order in buys + sells), Decimal(0))
    realized = value["sell"] - value["buy"] - fees
    log.info(
        "%s trade of opportunity %s: %s %s, realized pnl %s",
        mode,
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
        mode=mode,
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
