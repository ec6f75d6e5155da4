"""Alerts: the record of what is (or was) wrong, and the state machine that keeps it.

An alert is one incident of a condition with a stable key ("venue_stale:binance"); at most one
per key is open. Two kinds raise them: monitoring checks, whose conditions `sync` brings in line
run after run (opened, counted while they last, resolved once clear for ALERT_CLEAR_SECONDS), and
incidents raised where they happen (a hedged leg, a position left open, a reconciliation
difference) through `raise_alert`, which stay open until a person resolves them in admin. Only
opening and resolving notify, so a persisting or flapping condition never pages twice.

Everything that raises alerts (monitoring, risk, settlement, reconciliation) sits above this
module; it imports none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from trading.models import Alert
from trading.notify import rules

log = logging.getLogger(__name__)

WARNING, CRITICAL = Alert.Severity.WARNING, Alert.Severity.CRITICAL


@dataclass(frozen=True)
class Condition:
    """Something wrong right now. `key` is stable across runs; its part before ":" is the check."""

    key: str
    severity: str
    subject: str


@dataclass
class Transitions:
    opened: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


def check_of(key: str) -> str:
    return key.split(":", 1)[0]


def sync(
    conditions: Iterable[Condition],
    now: datetime,
    checks: Collection[str],
    unknown: Collection[str] = (),
) -> Transitions:
    """Bring the open alerts in line with one monitoring run: `conditions` are what the `checks`
    found. Notify after commit for every alert opened or resolved. Alerts of the checks in
    `unknown` (which could not run) are left as they are, and so are incidents."""
    active = {condition.key: condition for condition in conditions}
    changes = Transitions()
    with transaction.atomic():
        open_alerts = {a.key: a for a in Alert.objects.select_for_update().filter(resolved_at__isnull=True)}
        for key, condition in active.items():
            if key in open_alerts:
                persist(open_alerts[key], condition, now)
            else:
                changes.opened.append(open_alert(condition, now))
        for key, alert in open_alerts.items():
            check = check_of(key)
            if key not in active and check in checks and check not in unknown and cleared(alert, now):
                changes.resolved.append(alert)
        announce(changes)
    return changes


def raise_alert(condition: Condition, now: datetime | None = None) -> Alert | None:
    """Open an alert for `condition` now, between monitoring runs. None when an alert for its key
    is already open. Call inside a transaction: the notification goes out when it commits."""
    if Alert.objects.filter(key=condition.key, resolved_at__isnull=True).exists():
        return None
    try:
        with transaction.atomic():
            alert = open_alert(condition, now or timezone.now())
    except IntegrityError:
        log.info("alert %s opened meanwhile by a monitoring run: not opened twice", condition.key)
        return None
    announce(Transitions(opened=[alert]))
    return alert


def incident(key: str, severity: str, subject: str) -> Alert | None:
    """Raise the incident `key` in a transaction of its own (notified when it commits)."""
    with transaction.atomic():
        return raise_alert(Condition(key, severity, subject[:200]))


def open_alert(condition: Condition, now: datetime) -> Alert:
    log.warning("alert opened: %s (%s)", condition.subject, condition.key)
    return Alert.objects.create(
        key=condition.key,
        severity=condition.severity,
        subject=condition.subject,
        first_seen=now,
        last_seen=now,
    )


def persist(alert: Alert, condition: Condition, now: datetime) -> None:
    """The condition is still there: count it, and forget any clear spell it had."""
    alert.count += 1
    alert.last_seen = now
    alert.subject = condition.subject
    alert.clear_since = None
    alert.save(update_fields=["count", "last_seen", "subject", "clear_since"])


def cleared(alert: Alert, now: datetime) -> bool:
    """Record that the alert's condition is clear; resolve it (True) once clear long enough."""
    if alert.clear_since is None:
        alert.clear_since = now
    if now - alert.clear_since >= timedelta(seconds=settings.ALERT_CLEAR_SECONDS):
        alert.resolved_at = now
        log.info("alert resolved: %s (%s)", alert.subject, alert.key)
    alert.save(update_fields=["clear_since", "resolved_at"])
    return alert.resolved_at is not None


def announce(changes: Transitions) -> None:
    for alert in changes.opened:
        transaction.on_commit(partial(rules.alert_opened, alert))
    for alert in changes.resolved:
        transaction.on_commit(partial(rules.alert_resolved, alert))
