"""Reconciliation: what the record says against what each live venue reports.

Recorded orders (those not finished on record, and those of the last hour) are looked up on
their venue by client order id; recorded balances (free plus locked) are compared with the
venue's. Every difference opens an alert, shown in admin and notified like any other. Venues
with a trade in flight right now are skipped: their record is legitimately in flux (and a trade
left in flight by a dead worker is resumed, not left: trading.lifecycle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from trading import alerts, legs, lifecycle
from trading.models import Balance, Order, Venue
from trading.venues.base import Gateway, OrderNotFound, OrderResult, VenueError
from trading.venues.registry import tradeable

log = logging.getLogger(__name__)
RECENT = timedelta(hours=1)
UNFINISHED = (Order.Status.NEW, Order.Status.OPEN)


@dataclass(frozen=True)
class Difference:
    """One disagreement between the record and a venue; `key` names it stably for its alert."""

    key: str
    subject: str


def reconcile_all() -> list[Difference]:
    """Compare every enabled venue that trades live with the record and open an alert for each
    difference. Does nothing on paper (the record is the only ledger there). Returns the
    differences."""
    if settings.TRADING_MODE != "live":
        log.info("reconciliation skipped: trading on paper")
        return []
    differences: list[Difference] = []
    for venue in Venue.objects.filter(enabled=True, kind=Venue.Kind.CCXT):
        if tradeable(venue, "live"):
            differences += reconcile_venue(venue)
    with transaction.atomic():
        for difference in differences:
            condition = alerts.Condition(difference.key, alerts.WARNING, difference.subject[:200])
            alerts.raise_alert(condition, timezone.now())
    return differences


def reconcile_venue(venue: Venue) -> list[Difference]:
    """The differences between the record and `venue`; none while it has a trade in flight."""
    if Order.objects.filter(venue=venue, opportunity__status__in=lifecycle.IN_FLIGHT).exists():
        log.info("reconciliation of %s skipped: a trade is in flight there", venue.name)
        return []
    orders = _orders_to_check(venue)
    try:
        reported, balances = legs.run_on(venue, "live", lambda gw: _read(gw, orders))
    except VenueError as exc:
        log.warning("reconciliation of %s failed: %s", venue.name, exc)
        return [
            Difference(f"reconcile_unreachable:{venue.name}", f"Reconciliation could not reach {venue.name}")
        ]
    found = [diff for order in orders if (diff := order_difference(order, reported[order.client_order_id]))]
    return found + balance_differences(venue, _recorded_balances(venue), balances)


def _orders_to_check(venue: Venue) -> list[Order]:
    recent = timezone.now() - RECENT
    orders = Order.objects.filter(Q(status__in=UNFINISHED) | Q(updated_at__gte=recent), venue=venue)
    return list(orders.select_related("venue").order_by("pk"))


async def _read(
    gateway: Gateway, orders: list[Order]
) -> tuple[dict[str, OrderResult | None], dict[str, Decimal]]:
    """Each order as the venue reports it (None: the venue has no such order) and its balances."""
    reported: dict[str, OrderResult | None] = {}
    for order in orders:
        try:
            reported[order.client_order_id] = await gateway.fetch_order(order.client_order_id, order.symbol)
        except OrderNotFound:
            reported[order.client_order_id] = None
    return reported, await gateway.fetch_balance()


def order_difference(order: Order, reported: OrderResult | None) -> Difference | None:
    """How the venue's view of `order` differs from the record's, or None when they agree. An
    order recorded as never filled that the venue never saw agrees."""
    key = f"reconcile_order:{order.client_order_id}"
    if reported is None:
        if order.filled == 0 and order.status not in UNFINISHED:
            return None
        return Difference(
            key, f"{order} ({order.status}, filled {order.filled}) is unknown to {order.venue.name}"
        )
    if reported.status == order.status and reported.filled == order.filled:
        return None
    return Difference(
        key,
        f"{order}: recorded {order.status} filled {order.filled}, "
        f"{order.venue.name} reports {reported.status} filled {reported.filled}",
    )


def _recorded_balances(venue: Venue) -> dict[str, Decimal]:
    return {b.asset: b.free + b.locked for b in Balance.objects.filter(venue=venue)}


def balance_differences(
    venue: Venue, recorded: dict[str, Decimal], reported: dict[str, Decimal]
) -> list[Difference]:
    """One difference per asset whose recorded total differs from the venue's free balance (an
    asset missing on one side counts as zero there)."""
    differences = []
    for asset in sorted(set(recorded) | set(reported)):
        ours, theirs = recorded.get(asset, Decimal(0)), reported.get(asset, Decimal(0))
        if ours != theirs:
            subject = (
                f"{venue.name} {asset}: recorded {ours.normalize():f}, venue reports {theirs.normalize():f}"
            )
            differences.append(Difference(f"reconcile_balance:{venue.name}:{asset}", subject))
    return differences
