"""Settling a trade whose orders are recorded and funds held: the core's settlement policy
(trading.core.policy) carried out against the record and the venues, in paper and live alike.

Each step reads the record first. Both legs go out at once; what a leg misses is retried; what
stays one-sided is hedged; then the outcome is recorded as the opportunity's cash flow (a Trade
row, matched or not) valued at the market. An order's fills reach the ledger once, when its venue
says it is done, in the asset each fee was charged in. Anything that leaves it unknown what an
order did (a venue that does not answer, a database or Redis error, a time limit) stops here with
the opportunity still executing and an alert naming it: the trade task resumes it from what the
venues say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from decimal import Decimal
from functools import partial

from django.conf import settings
from django.db import transaction

from trading import alerts, balances, legs, orders, pubsub, risk_controls
from trading.core import ledger, policy
from trading.core.ledger import Movement, held_asset, release
from trading.core.numbers import plain
from trading.core.policy import Done, Outcome, Role, Rules, Send
from trading.core.risk import exposure
from trading.core.types import Side, split_symbol
from trading.lifecycle import finish
from trading.models import Deployment, Opportunity, Order, Trade, Venue
from trading.notify import rules as notify_rules
from trading.observability import metrics
from trading.venues.base import OrderNotFound, OrderRejected, OrderRequest, OrderResult

log = logging.getLogger(__name__)
Status = Opportunity.Status
MAX_STEPS = 64  # far beyond what the policy's attempts allow: a guard against a loop


class SettlementPending(Exception):
    """An order is still open on its venue (a cancel not yet done): the trade resumes later."""


def settle(opportunity: Opportunity, *, resuming: bool, fresh: Sequence[Order] = ()) -> str:
    """Carry `opportunity`'s orders through the settlement policy to its end; returns its final
    status. `fresh` are its orders just recorded and not sent yet (their rows in hand); every
    other unfinished order may have reached its venue, and is looked up there before anything is
    sent (all of them when `resuming`). Raises when what an order did is unknown; the
    opportunity stays executing."""
    rules = policy_rules(opportunity)
    unsent = set() if resuming else {order.pk for order in fresh}
    known: list[Order] | None = list(fresh) or None
    for _ in range(MAX_STEPS):
        rows = known if known is not None else orders.of(opportunity)
        known = None
        step = policy.next_step([orders.placed(order) for order in rows], rules)
        if isinstance(step, Done):
            return _done(opportunity, rows, step)
        if isinstance(step, Send):
            unsent.add(_record(opportunity, step).pk)
            continue
        pending = [order for order in rows if not order.finished]
        confirm(opportunity, pending, look_first={o.pk for o in pending if o.pk not in unsent})
        unsent.clear()
    raise RuntimeError(f"opportunity {opportunity.pk}: settlement did not end within {MAX_STEPS} steps")


def policy_rules(opportunity: Opportunity) -> Rules:
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    return Rules(
        retries=settings.LEG_RETRIES,
        hedge_attempts=settings.HEDGE_ATTEMPTS,
        hedge_max_loss_bps=Decimal(settings.HEDGE_MAX_LOSS_BPS),
        steps={venue.name: venue.amount_step for venue in venues},
        ticks={venue.name: venue.price_tick for venue in venues},
    )


def venue_of(opportunity: Opportunity, name: str) -> Venue:
    return opportunity.buy_venue if opportunity.buy_venue.name == name else opportunity.sell_venue


def _record(opportunity: Opportunity, step: Send) -> Order:
    """Record the policy's next order and hold its funds; alert on the first retry of a leg."""
    venue = venue_of(opportunity, step.venue)
    with transaction.atomic():
        order, holds = orders.record(
            opportunity,
            Deployment.current_key(),
            role=step.role,
            attempt=step.attempt,
            venue=venue,
            side=step.side,
            amount=step.amount,
            limit=step.limit,
        )
        balances.apply(holds, [venue])
    if step.role is not Role.HEDGE and step.attempt == 1:
        alerts.incident(
            f"leg_retry:{opportunity.pk}",
            alerts.WARNING,
            f"opportunity {opportunity.pk}: {step.role.value} leg missed {plain(step.amount)}: retrying",
        )
    return order


# --- confirming orders on their venues ------------------------------------------------------------


def as_request(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=Side(order.side),
        amount=order.amount,
        price=order.price,
        client_order_id=order.client_order_id,
        claimant=str(order.opportunity_id),
    )


def confirm(opportunity: Opportunity, pending: list[Order], look_first: Collection[int]) -> None:
    """Send or find every pending order on its venue, all at once, and record what each venue
    said. Raises SettlementPending when one is still open, or the first error that left an
    order's outcome unknown, after recording the others."""
    mode = opportunity.mode
    sends = [(order.venue, as_request(order), order.pk in look_first) for order in pending]

    async def confirm_all() -> list[OrderResult | BaseException]:
        calls = [
            legs.on_venue(venue, mode, partial(legs.confirmed, request=request, look_first=look))
            for venue, request, look in sends
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = legs.run(confirm_all)
    with transaction.atomic():
        locked = (
            Order.objects.select_for_update(of=("self",))
            .select_related("venue")
            .filter(pk__in=[o.pk for o in pending])
        )
        rows = {order.pk: order for order in locked.order_by("pk")}
        outcomes = [_save(rows[order.pk], result) for order, result in zip(pending, results, strict=True)]
        balances.apply([m for _, moved in outcomes for m in moved], {o.venue for o in rows.values()})
    unknown = [error for error, _ in outcomes if error is not None]
    if unknown:
        raise unknown[0]
    if any(isinstance(result, OrderResult) and not result.finished for result in results):
        raise SettlementPending(f"opportunity {opportunity.pk}: an order is still open after its cancel")


def _save(order: Order, result: OrderResult | BaseException) -> tuple[BaseException | None, list[Movement]]:
    """Record what the venue said of `order` (its row locked), and the ledger movements that
    brings. The error is returned when it left the outcome unknown: the order is then left as it
    was, to be looked up again."""
    if order.finished:
        return None, []  # recorded already (a redelivered task raced this one)
    if isinstance(result, OrderRejected | OrderNotFound):
        log.warning("order %s refused: %s", order.client_order_id, result)
        order.status = Order.Status.REJECTED
        order.raw = {"error": f"{type(result).__name__}: {result}"}
        order.save()
        return None, _booked(order)
    if isinstance(result, BaseException):
        log.warning("order %s: outcome unknown for now: %s", order.client_order_id, result)
        return result, []
    _take(order, result)
    order.save()
    return None, _booked(order) if order.finished else []


def _take(order: Order, result: OrderResult) -> None:
    """Copy the venue's account of the order onto its row (the fee valued in the quote)."""
    order.venue_order_id = result.venue_order_id or order.venue_order_id
    order.status = result.status
    order.filled = result.filled
    order.average_price = result.average_price
    order.cost = result.notional
    order.fees = [[charge.asset, str(charge.amount)] for charge in result.charges]
    order.fee = fee_value(order, result)
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


def fee_value(order: Order, result: OrderResult) -> Decimal | None:
    """The order's fees in its quote currency: a base-asset fee at the fill price, another asset's
    at its market mid. None (alerted, counted) when a fee cannot be valued or was not stated."""
    base, quote = split_symbol(order.symbol)
    total = Decimal(0)
    for charge in result.charges:
        price = _price_of(charge.asset, base, quote, result.average_price)
        if price is None:
            _unknown_fee(order, f"{charge.amount} {charge.asset} has no price in {quote}")
            return None
        total += charge.amount * price
    if not result.fee_stated:
        _unknown_fee(order, "the venue stated no fee for what filled")
        return None
    return total


def _price_of(asset: str, base: str, quote: str, fill_price: Decimal | None) -> Decimal | None:
    if asset == quote:
        return Decimal(1)
    if asset == base:
        return fill_price
    return market_mid(f"{asset}/{quote}")


def _unknown_fee(order: Order, why: str) -> None:
    metrics.UNKNOWN_FEES.labels(venue=order.venue.name).inc()
    alerts.incident(f"fee_unknown:{order.client_order_id}", alerts.WARNING, f"{order}: fee unknown: {why}")


def _booked(order: Order) -> list[Movement]:
    """The ledger's movements of a finished order: what it held back comes free again, and its
    fills move base, quote and the fees' assets."""
    movements = [release(order.venue.name, held_asset(order.symbol, Side(order.side)), order.held)]
    return movements + ledger.executed(orders.execution(order))


def market_mid(symbol: str, venue: str | None = None) -> Decimal | None:
    """The mid of `venue`'s latest `symbol` book, else of the first venue that has one; None when
    no venue has a book of it."""
    books = pubsub.latest_books(pubsub.shared(), symbol)
    book = books.get(venue or "") or next(iter(books.values()), None)
    return None if book is None else ledger.mid(book.best_bid, book.best_ask)


# --- the outcome ----------------------------------------------------------------------------------


def _done(opportunity: Opportunity, rows: list[Order], step: Done) -> str:
    """Record the opportunity's cash flow and finish it as the outcome says."""
    bought = sum((o.filled for o in rows if o.role == Order.Role.BUY), Decimal(0))
    sold = sum((o.filled for o in rows if o.role == Order.Role.SELL), Decimal(0))
    hedged = sum((o.filled for o in rows if o.role == Order.Role.HEDGE), Decimal(0))
    if step.outcome is Outcome.FLAT:
        return finish(opportunity, Status.FAILED, "nothing filled: every leg was refused or missed")
    with transaction.atomic():
        trade = record_cash_flow(opportunity, rows, step)
        transaction.on_commit(lambda: _announce(trade))
        risk_controls.enforce_daily_loss()
        if step.outcome is Outcome.OPEN:
            return _left_open(opportunity, step, bought, sold, hedged)
        if step.outcome is Outcome.HEDGED:
            _alert_hedge(opportunity, rows, hedged)
            transaction.on_commit(lambda: notify_rules.leg_failed(opportunity.pk))
            reason = f"leg failure: bought {plain(bought)}, sold {plain(sold)}, hedged {plain(hedged)}"
            return finish(opportunity, Status.FAILED, reason)
        if step.outcome is Outcome.PARTIAL:
            return finish(opportunity, Status.EXECUTED, f"both legs filled {plain(step.matched)} of the plan")
        return finish(opportunity, Status.EXECUTED, "both legs filled")


def _left_open(opportunity: Opportunity, step: Done, bought: Decimal, sold: Decimal, hedged: Decimal) -> str:
    base, _ = split_symbol(opportunity.symbol)
    where = "held on" if step.open_amount > 0 else "owed on"
    subject = (
        f"opportunity {opportunity.pk}: {plain(abs(step.open_amount))} {base} {where} {step.venue} "
        f"left open after {settings.HEDGE_ATTEMPTS} hedges"
    )
    alerts.incident(f"leg_hedge:{opportunity.pk}", alerts.CRITICAL, subject)
    transaction.on_commit(lambda: notify_rules.leg_failed(opportunity.pk))
    reason = f"position open: bought {plain(bought)}, sold {plain(sold)}, hedged {plain(hedged)}"
    return finish(opportunity, Status.ATTENTION, reason)


def _alert_hedge(opportunity: Opportunity, rows: list[Order], hedged: Decimal) -> None:
    venue = next(order.venue.name for order in rows if order.role == Order.Role.HEDGE)
    alerts.incident(
        f"leg_hedge:{opportunity.pk}",
        alerts.WARNING,
        f"opportunity {opportunity.pk}: hedged {plain(hedged)} {opportunity.symbol} on {venue}, flat",
    )


def record_cash_flow(opportunity: Opportunity, rows: list[Order], step: Done) -> Trade:
    """The opportunity's Trade row: its change in holdings, valued at the base's mid now (where
    the position sits, else on the buy venue) and the fee assets' mids."""
    base, quote = split_symbol(opportunity.symbol)
    flows = ledger.flows(orders.execution(order) for order in rows)
    mark = market_mid(opportunity.symbol, step.venue or opportunity.buy_venue.name) or _average(rows)
    prices = {asset: market_mid(f"{asset}/{quote}") for asset in flows if asset not in (base, quote)}
    valuation = ledger.value(flows, {**prices, base: mark}, quote)
    if valuation.unvalued:
        log.warning("opportunity %s: %s left out of its PnL (no price)", opportunity.pk, valuation.unvalued)
    fees = sum((order.fee or Decimal(0) for order in rows), Decimal(0))
    values = {
        "outcome": step.outcome.value,
        "symbol": opportunity.symbol,
        "buy_venue": opportunity.buy_venue,
        "sell_venue": opportunity.sell_venue,
        "amount": step.matched,
        "expected_pnl": opportunity.expected_profit or Decimal(0),
        "realized_pnl": valuation.pnl,
        "fees": fees,
        "base_flow": flows.get(base, Decimal(0)),
        "quote_flow": flows.get(quote, Decimal(0)),
        "other_flows": {a: str(v) for a, v in flows.items() if a not in (base, quote)},
        "mark_price": mark,
        "unvalued": ", ".join(valuation.unvalued),
        "mode": opportunity.mode,
    }
    trade = Trade.objects.filter(opportunity=opportunity).first()  # a resumed outcome is updated
    if trade is None:
        trade = Trade.objects.create(opportunity=opportunity, **values)
    else:
        Trade.objects.filter(pk=trade.pk).update(**values)
        trade.refresh_from_db()
    log.info(
        "%s %s of opportunity %s: %s %s matched, realized pnl %s",
        opportunity.mode,
        step.outcome.value,
        opportunity.pk,
        step.matched,
        opportunity.symbol,
        valuation.pnl,
    )
    return trade


def _average(rows: list[Order]) -> Decimal | None:
    filled = [order for order in rows if order.filled]
    amount = sum((order.filled for order in filled), Decimal(0))
    return sum((orders.cost(order) for order in filled), Decimal(0)) / amount if amount else None


def _announce(trade: Trade) -> None:
    pubsub.publish_event(
        pubsub.shared(),
        pubsub.names().trade_events,
        {
            "trade": trade.pk,
            "opportunity": trade.opportunity_id,
            "outcome": trade.outcome,
            "symbol": trade.symbol,
            "buy_venue": trade.buy_venue.name,
            "sell_venue": trade.sell_venue.name,
            "amount": str(trade.amount),
            "expected_pnl": str(trade.expected_pnl),
            "realized_pnl": str(trade.realized_pnl),
            "fees": str(trade.fees),
        },
    )
    if trade.outcome in (Trade.Outcome.MATCHED, Trade.Outcome.PARTIAL):
        notify_rules.trade_executed(trade)


# --- an interrupted trade -------------------------------------------------------------------------


def interrupted(opportunity: Opportunity, error: BaseException) -> None:
    """`error` stopped the trade. Without orders nothing was sent: it fails flat. With orders it
    stays in flight, to be resumed, and an alert names what may be open."""
    cause = f"{type(error).__name__}: {error}"[:120]
    try:
        rows = orders.of(opportunity)
        if not rows:
            finish(opportunity, Status.FAILED, f"error before any order: {cause}")
            return
        at_stake = exposure(orders.placed(order) for order in rows)
        base, _ = split_symbol(opportunity.symbol)
        position = ", ".join(f"{plain(amount)} {base} on {venue}" for venue, amount in at_stake.items())
        subject = (
            f"opportunity {opportunity.pk} interrupted ({cause}); at stake: {position or 'nothing'}; resuming"
        )
        alerts.incident(f"settlement_interrupted:{opportunity.pk}", alerts.CRITICAL, subject)
    except Exception:  # the database itself may be what failed: the sweep finds it all the same
        log.exception("opportunity %s: the interruption could not be recorded", opportunity.pk)
