"""Risk service: the limits in force, the check every trade passes before an order is sent, and
the kill switch.

The questions themselves are pure (trading.core.risk); this module loads their inputs from the
record and keeps the switch. The switch lives only in the database, so no restart clears it:
only `rearm`, which a person calls, does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from trading import alerts, orders
from trading.config import to_ms
from trading.core import risk as core_risk
from trading.core.types import Opportunity as Sized
from trading.core.types import split_symbol
from trading.models import KillSwitch, Opportunity, Order, RiskLimits, Trade, Venue

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


def halt_reason() -> str | None:
    """The rejection for every trade while the kill switch is tripped ("kill_switch: <why>"),
    else None. Read from the database each time: no process keeps a copy that could go stale.

    Call inside the transaction that records the trade's orders. On PostgreSQL the switch's row
    is read under a share lock held to the end of that transaction: a trip waits for the trades
    already past this check to be recorded, and a trade checking while a trip is being written
    waits for it and sees it tripped. No trade passes the check once `trip` has returned.
    (SQLite runs one writing transaction at a time, which orders them the same way.)
    """
    shared = " FOR SHARE" if connection.vendor == "postgresql" else ""
    table = KillSwitch._meta.db_table
    found = list(KillSwitch.objects.raw(f"SELECT * FROM {table} WHERE id = %s{shared}", [SWITCH]))
    if not found:
        kill_switch()
        return halt_reason()
    return f"kill_switch: {found[0].reason}" if found[0].tripped else None


def limit_violation(opportunity: Opportunity, sized: Sized, now: int) -> str | None:
    """The limit trading `sized` would break, as a reason starting "risk: ", or None to go ahead.

    Call under the balance row locks of both venues, before the orders are recorded: trades on
    the same venues are then serialised, so the exposure and last trade it reads stay current.
    """
    base, _ = split_symbol(sized.symbol)
    venues = (opportunity.buy_venue, opportunity.sell_venue)
    state = core_risk.RiskState(open_exposure(base), last_pair_trade_ms(venues, exclude=opportunity))
    return core_risk.trade_violation(sized, limits(), state, now)


# Opportunities whose orders may hold a position: in flight, or left open for a person.
MAY_HOLD = (Opportunity.Status.CLAIMED, Opportunity.Status.EXECUTING, Opportunity.Status.ATTENTION)


def open_exposure(base: str) -> dict[tuple[str, str], Decimal]:
    """Base per (venue, base) that opportunities in flight could still leave one-sided (a filled
    leg whose partner is being retried counts in full), plus what positions left open hold.
    Legs that matched, hedged or not, count nothing."""
    by_opportunity: defaultdict[int, list[Order]] = defaultdict(list)
    rows = Order.objects.filter(symbol__startswith=f"{base}/", opportunity__status__in=MAY_HOLD)
    for order in rows.select_related("venue"):
        by_opportunity[order.opportunity_id].append(order)
    exposure: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for placed in by_opportunity.values():
        for venue, amount in core_risk.exposure(orders.placed(order) for order in placed).items():
            exposure[(venue, base)] += amount
    return dict(exposure)


def last_pair_trade_ms(venues: tuple[Venue, Venue], exclude: Opportunity) -> int | None:
    """When orders were last recorded for a trade between the two venues, either way round."""
    a, b = venues
    pair = Q(opportunity__buy_venue=a, opportunity__sell_venue=b) | Q(
        opportunity__buy_venue=b, opportunity__sell_venue=a
    )
    last = Order.objects.filter(pair).exclude(opportunity=exclude).order_by("-created_at").first()
    return None if last is None else to_ms(last.created_at)


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
        f"daily_loss: realized {core_risk.plain(realized)} today, limit {core_risk.plain(limit)}",
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
