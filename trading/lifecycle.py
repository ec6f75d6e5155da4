"""An opportunity's life, in one place: every change of its status is made here.

    listener: open ─> dispatched ──claimed, re-checked, orders recorded──> executing ─> executed
                 └─> rejected        └─> rejected | expired (nothing sent)     │    └─> failed (flat)
                                                                                └─> attention

`open` records the listener's decision (its mode, paper or live, is fixed then); `dispatch`
hands an accepted one to the trade queue. One worker claims it, re-checks it and records its
orders in one transaction (trading.execution): it commits executing with the orders, or rejected
or expired without any, so no other state is ever seen in between. Settlement then `finish`es
it. An executing opportunity has a position, or may: one whose worker died (an exception, a time
limit, a killed process) stays executing, `abandoned` finds it and the trade task takes it over,
so no position is ever forgotten. Attention is settlement giving up on a position it could not
close; an open alert names it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Context, Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from arbsite.celery import app
from trading import pubsub, trade_store
from trading.clock import from_ms
from trading.core.types import Decision
from trading.models import Opportunity, StrategyConfig
from trading.observability import metrics

log = logging.getLogger(__name__)
Status = Opportunity.Status

EXECUTE_TASK = "trade.execute_opportunity"
IN_FLIGHT = (Status.EXECUTING,)
DONE = (Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.ATTENTION)
# Without PostgreSQL's locks an opportunity in flight counts as abandoned once it has been left
# untouched longer than a trade task may run.
LEASE_MARGIN_SECONDS = 5


def open_opportunity(
    decision: Decision,
    now: int,
    *,
    venue_ids: dict[str, int],
    strategy: StrategyConfig | None,
    mode: str,
    pk: int | None = None,
    undispatched: str | None = None,
) -> Opportunity:
    """Record the listener's decision, in one statement: dispatched when accepted, else rejected
    with its reason; failed flat when `undispatched` says why its task could not be queued. `pk`
    is the id `reserve_ids` gave it, when its task went out first. The listener's commits do not
    wait for the disk: lost in a database crash, an opportunity is one that never traded (its
    task, if dispatched, finds no row to claim)."""
    status, reason = Status.DISPATCHED, ""
    if not decision.accepted:
        status, reason = Status.REJECTED, decision.reason
    elif undispatched is not None:
        status, reason = Status.FAILED, f"dispatch failed: {undispatched}"[:200]
    row = Opportunity(
        pk=pk,
        symbol=decision.symbol,
        buy_venue_id=venue_ids[decision.buy_venue],
        sell_venue_id=venue_ids[decision.sell_venue],
        status=status,
        reason=reason,
        mode=mode,
        strategy=strategy,
        detected_at=from_ms(now),
        last_seen_at=from_ms(now),
        **_expected(decision),
    )
    trade_store.insert([row])
    metrics.OPPORTUNITIES.labels(status=status).inc()
    return row


def _expected(decision: Decision) -> dict[str, Any]:
    sized = decision.sized
    if sized is None:
        return {}
    return {
        "amount": sized.buy.amount,
        "buy_price": sized.buy.price,
        "sell_price": sized.sell.price,
        "buy_worst_price": sized.buy.worst_price,
        "sell_worst_price": sized.sell.worst_price,
        "expected_fees": sized.buy.fee + sized.sell.fee,
        "expected_profit": sized.net_profit,
        # Wide enough for any gap between books that pass validation (the column is too).
        "expected_bps": sized.net_bps.quantize(Decimal("0.0001"), context=Context(prec=40)),
    }


def reserve_ids(count: int) -> list[int]:
    """`count` ids for opportunities not recorded yet, from the table's own sequence, so that an
    opportunity's task can go out before its row is written (see `open_opportunity`). An empty
    list without PostgreSQL: there the row is written first."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('trading_opportunity', 'id')) FROM generate_series(1, %s)",
            [count],
        )
        return [key for (key,) in cursor.fetchall()]


def dispatch_failed(opportunity_id: int, error: Exception) -> None:
    """The trade task could not be queued: nothing was sent, so the opportunity fails flat."""
    failed = Opportunity.objects.filter(pk=opportunity_id, status=Status.DISPATCHED).update(
        status=Status.FAILED, reason=f"dispatch failed: {error}"[:200], updated_at=timezone.now()
    )
    metrics.OPPORTUNITIES.labels(status=Status.FAILED).inc(failed)


def fail_unsent(opportunity_id: int, reason: str) -> None:
    """The re-check failed before recording any order (its transaction rolled back, so the
    opportunity is still dispatched): nothing was sent, it fails flat. Best effort: if the
    database itself is what failed, the lost-dispatch sweep expires it later."""
    try:
        failed = Opportunity.objects.filter(pk=opportunity_id, status=Status.DISPATCHED).update(
            status=Status.FAILED, reason=reason[:200], updated_at=timezone.now()
        )
    except DatabaseError:
        log.exception("opportunity %s could not be marked failed", opportunity_id)
        return
    metrics.OPPORTUNITIES.labels(status=Status.FAILED).inc(failed)


def take_over(opportunity_id: int) -> Opportunity | None:
    """The opportunity, if it is executing and no worker is on it any more (call holding its
    lock: `exclusive`), touched so that it is not handed out again meanwhile; else None."""
    opportunity = _load(opportunity_id)
    if opportunity is None or opportunity.status not in IN_FLIGHT:
        return None
    if not _advisory_locks() and not _lease_expired(opportunity):
        return None
    Opportunity.objects.filter(pk=opportunity_id).update(updated_at=timezone.now())
    return opportunity


def _load(opportunity_id: int) -> Opportunity | None:
    related = Opportunity.objects.select_related("buy_venue", "sell_venue", "strategy")
    return related.filter(pk=opportunity_id).first()


def finish(opportunity: Opportunity, status: str, reason: str) -> str:
    """End an opportunity in flight as `status` with `reason`, and announce it when that commits
    (the listener re-arms the crossing on it). Returns `status`."""
    finished = Opportunity.objects.filter(pk=opportunity.pk, status__in=IN_FLIGHT).update(
        status=status, reason=reason[:200], updated_at=timezone.now()
    )
    metrics.OPPORTUNITIES.labels(status=status).inc(finished)
    log.info("opportunity %s %s: %s", opportunity.pk, status, reason)
    if finished:
        opportunity.status = status
        transaction.on_commit(lambda: announce_settled(opportunity.pk, status))
    return status


def closed_by_hand(opportunity: Opportunity, by: str) -> bool:
    """A person closed the position settlement left open (attention): it is flat now. False for
    an opportunity that was not waiting for that."""
    closed = Opportunity.objects.filter(pk=opportunity.pk, status=Status.ATTENTION).update(
        status=Status.FAILED, reason=f"position closed by hand by {by}"[:200], updated_at=timezone.now()
    )
    if closed:
        log.warning("opportunity %s: position closed by hand by %s", opportunity.pk, by)
    return bool(closed)


def announce_settled(opportunity_id: int, status: str) -> None:
    """Tell listeners the opportunity is done with (best effort: they also look in the record)."""
    try:
        with pubsub.connect() as client:
            pubsub.publish_event(
                client,
                pubsub.names().opportunity_events,
                {"opportunity": opportunity_id, "status": status, "settled": True},
            )
    except redis.RedisError as exc:
        log.warning("settlement of opportunity %s not announced: %s", opportunity_id, exc)


def settled(opportunity_ids: list[int]) -> dict[int, Any]:
    """Which of `opportunity_ids` are done with, and when: {id: updated_at}."""
    done = Opportunity.objects.filter(pk__in=opportunity_ids, status__in=DONE)
    return dict(done.values_list("pk", "updated_at"))


# --- one worker per opportunity -------------------------------------------------------------------


@contextmanager
def exclusive(opportunity_id: int) -> Iterator[trade_store.Lock]:
    """The opportunity's session lock for this process to take (`acquire`, or a claim made with
    it), released on exit. PostgreSQL drops it with the connection of a killed worker, so another
    worker gets it then, but never while the first one still runs. Without PostgreSQL (the quick
    SQLite demo) the claim and the lease in `take_over` keep a trade to one worker."""
    lock = trade_store.Lock(opportunity_id)
    try:
        yield lock
    finally:
        lock.release()


def _advisory_locks() -> bool:
    return connection.vendor == "postgresql"


def _lease_expired(opportunity: Opportunity) -> bool:
    lease = timedelta(seconds=settings.TRADE_TIME_LIMIT_S + LEASE_MARGIN_SECONDS)
    return opportunity.updated_at < timezone.now() - lease


def abandoned() -> list[int]:
    """Opportunities in flight that no worker is on: their worker died (or, without PostgreSQL,
    their lease ran out). The trade task resumes each."""
    ids = list(Opportunity.objects.filter(status__in=IN_FLIGHT).order_by("pk").values_list("pk", flat=True))
    if not _advisory_locks():
        lease = timezone.now() - timedelta(seconds=settings.TRADE_TIME_LIMIT_S + LEASE_MARGIN_SECONDS)
        stale = Opportunity.objects.filter(pk__in=ids, updated_at__lt=lease)
        return list(stale.values_list("pk", flat=True))
    free = []
    for opportunity_id in ids:
        with exclusive(opportunity_id) as lock:
            if lock.acquire():
                free.append(opportunity_id)
    return free


def expire_lost(now: int) -> int:
    """Dispatched opportunities no worker claimed within their time to live and a grace of
    LOST_DISPATCH_SECONDS (the task was lost with the broker's data): nothing was sent, so they
    expire. Returns how many."""
    grace = timedelta(seconds=settings.LOST_DISPATCH_SECONDS)
    waiting = Opportunity.objects.filter(status=Status.DISPATCHED, detected_at__lt=from_ms(now) - grace)
    expired = 0
    for opportunity in waiting.select_related("strategy"):
        ttl = timedelta(milliseconds=opportunity.strategy.ttl_ms if opportunity.strategy else 0)
        if opportunity.detected_at + ttl + grace < from_ms(now):
            expired += Opportunity.objects.filter(pk=opportunity.pk, status=Status.DISPATCHED).update(
                status=Status.EXPIRED,
                reason="ttl_exceeded: never taken up by a worker",
                updated_at=timezone.now(),
            )
    metrics.OPPORTUNITIES.labels(status=Status.EXPIRED).inc(expired)
    return expired


def dispatch(opportunity_id: int) -> bool:
    """Queue the trade task for the recorded `opportunity_id`; False (and the opportunity failed
    flat) when the broker cannot take it."""
    error = send(opportunity_id)
    if error is not None:
        dispatch_failed(opportunity_id, error)
    return error is None


def send(opportunity_id: int) -> Exception | None:
    """Queue the trade task for `opportunity_id`, by name with the app's routes (the task module is
    never imported here); the broker's error when it cannot take it."""
    try:
        app.send_task(EXECUTE_TASK, args=(opportunity_id,))
    except (OperationalError, redis.RedisError) as exc:
        log.exception("could not dispatch opportunity %s", opportunity_id)
        return exc
    log.info("opportunity %s dispatched for execution", opportunity_id)
    return None
