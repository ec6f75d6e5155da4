"""Our accounts on the live venues, kept current in the record so that no venue read stands between
a decision and its orders: each venue's fee tier and market rules, and its balances while no
trade is in flight there. The `trade.refresh_accounts` beat task and every worker's start call
`refresh_all`; `warm_up` also opens each venue's order gateway in the worker beforehand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from trading import alerts, legs, lifecycle, pubsub
from trading.core_inputs import NoActiveStrategy, active_strategy
from trading.legs import VenueFacts
from trading.models import Balance, Deployment, Order, Venue
from trading.venues.base import Gateway, VenueError
from trading.venues.registry import tradeable

log = logging.getLogger(__name__)


def live_venues() -> list[Venue]:
    """The enabled venues that trade live (none unless TRADING_MODE is live)."""
    if settings.TRADING_MODE != "live":
        return []
    return [venue for venue in Venue.objects.filter(enabled=True) if tradeable(venue, "live")]


def refresh_all() -> dict[str, list[str]]:
    """Read every live venue's facts and record what changed; {venue: what changed}. A venue
    that cannot be reached keeps its record (and is logged)."""
    try:
        symbol = active_strategy().symbols[0]
    except (NoActiveStrategy, IndexError):
        return {}
    changed: dict[str, list[str]] = {}
    for venue in live_venues():
        try:
            facts = legs.run_on(venue, "live", lambda gw: legs.venue_facts(gw, symbol))
        except VenueError as exc:
            log.warning("%s: account facts not refreshed: %s", venue.name, exc)
            continue
        changed[venue.name] = adopt(venue, facts)
    return changed


def adopt(venue: Venue, facts: VenueFacts) -> list[str]:
    """Record the venue's fee tier and market rules, and its balances unless a trade is in flight
    there (its holds are then the record's own business). Returns what changed."""
    updates = {
        "taker_fee": facts.taker_fee,
        "amount_step": facts.rules.amount_step,
        "min_amount": facts.rules.min_amount,
        "min_cost": facts.rules.min_cost,
        "price_tick": facts.rules.price_tick,
    }
    changed = [name for name, value in updates.items() if value is not None and getattr(venue, name) != value]
    if changed:
        log.warning(
            "%s: recording the venue's %s", venue.name, ", ".join(f"{n} {updates[n]}" for n in changed)
        )
        Venue.objects.filter(pk=venue.pk).update(**{name: updates[name] for name in changed})
    return changed + _adopt_balances(venue, facts.balances)


def _adopt_balances(venue: Venue, reported: dict[str, Decimal]) -> list[str]:
    with transaction.atomic():
        if Order.objects.filter(venue=venue, opportunity__status__in=lifecycle.IN_FLIGHT).exists():
            return []
        rows = {b.asset: b for b in Balance.objects.select_for_update().filter(venue=venue)}
        changed = []
        for asset, amount in sorted(reported.items()):
            row = rows.get(asset)
            recorded = Decimal(0) if row is None else row.free + row.locked
            if recorded == amount or (row is None and not amount):
                continue
            Balance.objects.update_or_create(venue=venue, asset=asset, defaults={"free": amount, "locked": 0})
            changed.append(f"balance {asset}")
            subject = (
                f"{venue.name} {asset}: recorded {recorded.normalize():f}, "
                f"the venue holds {amount.normalize():f}: adopted"
            )
            alerts.raise_alert(
                alerts.Condition(f"balance_adopted:{venue.name}:{asset}", alerts.WARNING, subject[:200])
            )
        return changed


def warm_up() -> None:
    """Ready this process to trade at once: its Redis client, the deployment key, every tradeable
    venue's order gateway open with its markets loaded, and (live) the accounts refreshed."""
    pubsub.shared().ping()
    Deployment.current_key()
    try:
        symbols = list(active_strategy().symbols)
    except NoActiveStrategy:
        return
    mode = settings.TRADING_MODE
    for venue in Venue.objects.filter(enabled=True):
        if not tradeable(venue, mode):
            continue
        try:
            legs.run_on(venue, mode, lambda gw: _load_markets(gw, symbols))
        except VenueError as exc:
            log.warning("%s: order gateway not warmed: %s", venue.name, exc)
    refresh_all()


async def _load_markets(gateway: Gateway, symbols: Sequence[str]) -> None:
    """Read each symbol's market rules, which loads the gateway's markets."""
    for symbol in symbols:
        await gateway.market_rules(symbol)
