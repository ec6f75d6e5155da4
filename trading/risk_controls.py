"""Risk controls: the limits in force, the check every trade passes before an order is sent, and
the kill switch.

The questions themselves are pure (trading.core.risk); this module loads their inputs from the
record and keeps the switch. The switch lives only in the database, so no restart clears it:
only `rearm`, which a person calls, does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from trading import alerts, orders, trade_store
from trading.clock import from_ms, to_ms
from trading.core import risk as core_risk
from trading.core.numbers import plain
from trading.core.policy import Placed
from trading.core.types import SizedTrade, split_symbol
from trading.models import KillSwitch, Opportunity, RiskLimits, Trade

log = logging.getLogger(__name__)

SWITCH = 1  # the kill switch's primary key: there is exactly one
DAILY_LOSS = "daily loss limit"  # who trips the switch when the loss limit does


LIMIT_FIELDS = ("max_trade_notional", "max_open_exposure", "daily_loss_limit", "pair_cooldown_seconds")


def limits() -> core_risk.Limits:
    """The limits in force (the RiskLimits row, created from the settings' defaults if missing),
    read in one query: every trade's re-check asks."""
    rows = list(RiskLimits.objects.filter(pk=1).values_list(*LIMIT_FIELDS, "paused_venues__name"))
    if not rows:
        RiskLimits.current()
        return limits()
    notional, exposure, daily_loss, cooldown, _ = rows[0]
    return core_risk.Limits(
        max_trade_notional=notional,
        max_open_exposure=exposure,
        daily_loss_limit=daily_loss,
        pair_cooldown_ms=cooldown * 1000,
        paused_venues=frozenset(row[-1] for row in rows if row[-1] is not None),
    )


def kill_switch() -> KillSwitch:
    switch, _ = KillSwitch.objects.get_or_create(pk=SWITCH)
    return switch


# --- before a trade -------------------------------------------------------------------------------


def halt_reason(guards: trade_store.Guards) -> str | None:
    """The rejection for every trade while the kill switch is tripped ("kill_switch: <why>"),
    else None. `guards` are read in the transaction that records the trade's orders, the switch
    under a share lock held to its end: a trip waits for the trades already past this check to be
    recorded, and a trade checking while a trip is being written waits for it and sees it
    tripped. No trade passes once `trip` has returned. (SQLite runs one writing transaction at a
    time, which orders them the same way.)"""
    return f"kill_switch: {guards.reason}" if guards.tripped else None


def limit_violation(
    opportunity: Opportunity, sized: SizedTrade, now: int, guards: trade_store.Guards
) -> str | None:
    """The limit trading `sized` would break, as a reason starting "risk: ", or None to go ahead.

    Call under the balance row locks of both venues, before the orders are recorded: trades on
    the same venues are then serialised, so the exposure and last trade it reads stay current.
    """
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    limits = core_risk.Limits(
        max_trade_notional=guards.max_trade_notional,
        max_open_exposure=guards.max_open_exposure,
        daily_loss_limit=guards.daily_loss_limit,
        pair_cooldown_ms=guards.pair_cooldown_seconds * 1000,
        paused_venues=frozenset(venue.name for venue in venues if venue.pk in guards.paused),
    )
    base, _ = split_symbol(sized.symbol)
    exposure = open_exposure(base) if limits.max_open_exposure is not None else {}
    last = last_pair_trade_ms(opportunity, limits.pair_cooldown_ms, now) if limits.pair_cooldown_ms else None
    return core_risk.trade_violation(sized, limits, core_risk.RiskState(exposure, last), now)


# Opportunities whose orders may hold a position: in flight, or left open for a person.
MAY_HOLD = (Opportunity.Status.EXECUTING, Opportunity.Status.ATTENTION)


def open_exposure(base: str) -> dict[tuple[str, str], Decimal]:
    """Base per (venue, base) that opportunities in flight could still leave one-sided (a filled
    leg whose partner is being retried counts in full), plus what positions left open hold.
    Legs that matched, hedged or not, count nothing."""
    by_opportunity: defaultdict[int, list[Placed]] = defaultdict(list)
    for order, venue_name in trade_store.orders_that_may_hold(base, MAY_HOLD):
        by_opportunity[order.opportunity_id].append(orders.placed(order, venue_name))
    exposure: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for placed in by_opportunity.values():
        for venue, amount in core_risk.exposure(placed).items():
            exposure[(venue, base)] += amount
    return dict(exposure)


def last_pair_trade_ms(opportunity: Opportunity, cooldown_ms: int, now: int) -> int | None:
    """When orders were last recorded, within the cooldown, for another trade between the
    opportunity's two venues either way round."""
    since = from_ms(now - cooldown_ms - 1000)  # a second early: clocks of processes differ
    last = trade_store.last_pair_trade(opportunity.buy_venue, opportunity.sell_venue, opportunity.pk, since)
    return None if last is None else to_ms(last)


# --- after a trade, and on the monitoring beat ----------------------------------------------------


def todays_pnls() -> list[Decimal]:
    """Today's realized PnL, one figure per opportunity that traded anything (matched, partial,
    hedged or left open), in the order they were recorded."""
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    today = Trade.objects.filter(created_at__gte=start).order_by("created_at")
    return list(today.values_list("realized_pnl", flat=True))


def enforce_daily_loss() -> KillSwitch | None:
    """Trip the switch when today's realized loss is past the limit. Returns the switch when it
    is (or already was) tripped for that, None while the loss is within the limit."""
    pnls, limit = todays_pnls(), limits().daily_loss_limit
    if not core_risk.past_daily_loss(pnls, limit):
        return None
    realized = sum(pnls, Decimal(0))
    return trip(
        f"daily_loss: realized {plain(realized)} today, limit {plain(limit)}",
        by=DAILY_LOSS,
    )


# --- the kill switch ------------------------------------------------------------------------------


def trip(reason: str, by: str) -> KillSwitch:
    """Trip the kill switch: no new trade starts anywhere until someone re-arms it. Books, orders
    and trades already recorded are left as they are. The first trip opens a critical alert
    (notified when the transaction commits); tripping a tripped switch changes nothing, so its
    first reason and time stand. Returns the switch."""
    now = timezone.now()
    with transaction.atomic():
        kill_switch()
        tripped = KillSwitch.objects.filter(pk=SWITCH, tripped_at__isnull=True).update(
            tripped_at=now, reason=reason[:200], tripped_by=by[:100]
        )
        switch = KillSwitch.objects.get(pk=SWITCH)
        if tripped:
            log.critical("kill switch tripped by %s: %s", by, reason)
            alerts.raise_alert(kill_switch_condition(switch), now)
        else:
            log.info("kill switch already tripped (%s): %s not recorded", switch.reason, reason)
    return switch


def rearm(by: str) -> KillSwitch:
    """Let trading resume, recording who re-armed and when; a no-op on an armed switch. The last
    trip's reason and who tripped it stay on record. The switch's alert resolves on the next
    monitoring runs."""
    if not by.strip():
        raise ValueError("re-arming the kill switch needs the name of the person doing it")
    kill_switch()
    rearmed = KillSwitch.objects.filter(pk=SWITCH, tripped_at__isnull=False).update(
        tripped_at=None, rearmed_at=timezone.now(), rearmed_by=by[:100]
    )
    switch = KillSwitch.objects.get(pk=SWITCH)
    if rearmed:
        log.warning("kill switch re-armed by %s (was tripped: %s)", by, switch.reason)
    else:
        log.info("kill switch already armed: re-arm by %s changes nothing", by)
    return switch


def kill_switch_condition(switch: KillSwitch) -> alerts.Condition:
    return alerts.Condition(
        "kill_switch", alerts.CRITICAL, f"Kill switch tripped, no new trades: {switch.reason}"
    )


def describe(switch: KillSwitch) -> str:
    """One line for people: the switch's state with who and why."""
    if switch.tripped:
        return f"TRIPPED at {switch.tripped_at:%Y-%m-%d %H:%M:%S %Z} by {switch.tripped_by}: {switch.reason}"
    if switch.rearmed_at is not None:
        return f"armed (re-armed at {switch.rearmed_at:%Y-%m-%d %H:%M:%S %Z} by {switch.rearmed_by})"
    return "armed (never tripped)"
