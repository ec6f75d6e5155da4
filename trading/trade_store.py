"""What the trade path reads and writes between a decision and its orders, in as few statements as
it takes.

The ORM spends a millisecond or more building each query; between a decision and its orders a
few dozen of them would cost more than the gaps last. These statements go straight through
Django's connection (PostgreSQL, or SQLite for the quick demo), and rows come back as models
through `Model.objects.raw`, which converts column values as the ORM does on either database.
Everything here runs inside the re-check's transaction; the locks named are PostgreSQL's (SQLite
runs one writing transaction at a time, which orders them the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import Model
from django.utils import timezone

from trading.core.ledger import Movement
from trading.models import (
    Balance,
    Deployment,
    KillSwitch,
    Opportunity,
    Order,
    RiskLimits,
    StrategyConfig,
    Venue,
)

KILL_SWITCH, LIMITS = 1, 1  # the one row of each


def _locking(clause: str) -> str:
    return f" {clause}" if connection.vendor == "postgresql" else ""


def _execute(sql: str, params: Sequence[object]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@dataclass(frozen=True)
class Claimed:
    """The claimed opportunity with its venues and strategy in place, and the deployment's key."""

    opportunity: Opportunity
    strategy: StrategyConfig
    deployment: str


def claim(opportunity_id: int) -> Claimed | None:
    """Move a dispatched opportunity to executing and load it with its two venues and its
    strategy (the active one when it has none); None when it is not (or no longer) dispatched.
    Until the transaction commits nobody sees the claim: it commits with the orders, or with the
    reason none are sent."""
    status = Opportunity.Status
    claimed = list(
        Opportunity.objects.raw(
            "UPDATE trading_opportunity SET status = %s, updated_at = %s "
            "WHERE id = %s AND status = %s RETURNING *",
            [status.EXECUTING, timezone.now(), opportunity_id, status.DISPATCHED],
        )
    )
    if not claimed:
        return None
    opportunity = claimed[0]
    ids = [opportunity.buy_venue_id, opportunity.sell_venue_id]
    venues = {
        venue.pk: venue
        for venue in Venue.objects.raw("SELECT * FROM trading_venue WHERE id IN (%s, %s)", ids)
    }
    opportunity.buy_venue, opportunity.sell_venue = venues[ids[0]], venues[ids[1]]
    where = "s.id = %s" if opportunity.strategy_id else "s.active = %s"
    [strategy] = StrategyConfig.objects.raw(
        "SELECT s.*, (SELECT d.key FROM trading_deployment d WHERE d.id = 1) AS deployment "
        f"FROM trading_strategyconfig s WHERE {where}",
        [opportunity.strategy_id or True],
    )
    opportunity.strategy = strategy
    return Claimed(opportunity, strategy, strategy.deployment or Deployment.current_key())


def lock_balances(*venues: Venue) -> dict[tuple[int, str], Balance]:
    """Every balance row of `venues`, locked until the transaction ends, in the one order every
    writer of balances locks them (trading.balances): trades with a venue in common run their
    re-checks one at a time."""
    sql = "SELECT * FROM trading_balance WHERE venue_id IN (%s, %s) ORDER BY venue_id, asset"
    rows = Balance.objects.raw(sql + _locking("FOR UPDATE"), [venue.pk for venue in venues])
    return {(row.venue_id, row.asset): row for row in rows}


@dataclass(frozen=True)
class Guards:
    """What every trade is checked against: whether the kill switch is tripped (and why), the
    limits in force, and the ids of the paused venues."""

    tripped: bool
    reason: str
    max_trade_notional: Decimal | None
    max_open_exposure: Decimal | None
    daily_loss_limit: Decimal
    pair_cooldown_seconds: int
    paused: frozenset[int]


def guards() -> Guards:
    """The kill switch and the limits in one statement, the switch read under a share lock held
    to the end of the transaction: a trip waits for trades already past this read, and a read
    during a trip waits for it. Rows missing on a fresh database are created first."""
    sql = (
        "SELECT k.tripped_at IS NOT NULL, k.reason, CAST(r.max_trade_notional AS TEXT), "
        "CAST(r.max_open_exposure AS TEXT), CAST(r.daily_loss_limit AS TEXT), "
        "r.pair_cooldown_seconds, p.venue_id "
        "FROM trading_killswitch k JOIN trading_risklimits r ON r.id = %s "
        "LEFT JOIN trading_risklimits_paused_venues p ON p.risklimits_id = r.id WHERE k.id = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql + _locking("FOR SHARE OF k"), [LIMITS, KILL_SWITCH])
        rows = cursor.fetchall()
    if not rows:
        KillSwitch.objects.get_or_create(pk=KILL_SWITCH)
        RiskLimits.current()
        return guards()
    tripped, reason, notional, exposure, daily_loss, cooldown, _ = rows[0]
    return Guards(
        tripped=bool(tripped),
        reason=reason,
        max_trade_notional=_decimal(notional),
        max_open_exposure=_decimal(exposure),
        daily_loss_limit=Decimal(daily_loss),
        pair_cooldown_seconds=cooldown,
        paused=frozenset(row[-1] for row in rows if row[-1] is not None),
    )


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def orders_that_may_hold(base: str, statuses: Sequence[str]) -> list[Order]:
    """The `base` orders of every opportunity in `statuses`, each with its venue's name as
    `venue_name`."""
    placeholders = ", ".join(["%s"] * len(statuses))
    return list(
        Order.objects.raw(
            "SELECT o.*, v.name AS venue_name FROM trading_order o "
            "JOIN trading_opportunity p ON p.id = o.opportunity_id JOIN trading_venue v ON v.id = o.venue_id "
            f"WHERE p.status IN ({placeholders}) AND o.symbol LIKE %s",
            [*statuses, f"{base}/%"],
        )
    )


def insert(rows: Sequence[Model]) -> None:
    """Insert new rows of one model in one statement (auto_now fields stamped, values converted as
    the ORM converts them), setting their primary keys."""
    model = type(rows[0])
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    values, params = [], []
    for row in rows:
        values.append("(" + ", ".join(["%s"] * len(fields)) + ")")
        params += [field.get_db_prep_save(field.pre_save(row, add=True), connection) for field in fields]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    table, pk = model._meta.db_table, model._meta.pk.column
    sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join(values)} RETURNING {pk}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for row, (key,) in zip(rows, cursor.fetchall(), strict=True):
            row.pk = key
            row._state.adding, row._state.db = False, connection.alias


def defer_flushes() -> None:
    """Let every commit of this process, on the database sessions it has and will open, return
    before its records are flushed to disk (PostgreSQL). Only for a process whose records cost
    nothing if a database crash loses them: a later durable commit, such as the one that records
    a trade's orders, flushes them all the same."""
    connection_created.connect(_defer_session_flushes, dispatch_uid="trade_store.defer_flushes")
    if connection.connection is not None:
        _defer_session_flushes(connection)


def _defer_session_flushes(connection: BaseDatabaseWrapper, **_: object) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")


def hold(
    rows: dict[tuple[int, str], Balance], venues: dict[str, Venue], movements: Sequence[Movement]
) -> bool:
    """Move the locked balance `rows` by `movements` in one statement. False (nothing moved) when
    a movement's row does not exist: the caller moves balances the general way then."""
    changes: dict[int, tuple[Decimal, Decimal]] = {}
    for movement in movements:
        row = rows.get((venues[movement.venue].pk, movement.asset))
        if row is None:
            return False
        free, locked = changes.get(row.pk, (Decimal(0), Decimal(0)))
        changes[row.pk] = (free + movement.free, locked + movement.locked)
    free_cases = " ".join("WHEN %s THEN %s" for _ in changes)
    ids = ", ".join(["%s"] * len(changes))
    sql = (
        f"UPDATE trading_balance SET free = free + CASE id {free_cases} END, "
        f"locked = locked + CASE id {free_cases} END, updated_at = %s WHERE id IN ({ids})"
    )
    params: list[object] = [value for pk, (free, _) in changes.items() for value in (pk, free)]
    params += [value for pk, (_, locked) in changes.items() for value in (pk, locked)]
    _execute(sql, [*params, timezone.now(), *changes])
    return True


def last_pair_trade(buy: Venue, sell: Venue, exclude: int, since: datetime) -> datetime | None:
    """When orders were last recorded, since `since`, for another opportunity between the two
    venues either way round."""
    sql = (
        "SELECT o.* FROM trading_order o JOIN trading_opportunity p ON p.id = o.opportunity_id "
        "WHERE ((p.buy_venue_id = %s AND p.sell_venue_id = %s) "
        "OR (p.buy_venue_id = %s AND p.sell_venue_id = %s)) "
        "AND p.id <> %s AND o.created_at >= %s ORDER BY o.created_at DESC LIMIT 1"
    )
    found = list(Order.objects.raw(sql, [buy.pk, sell.pk, sell.pk, buy.pk, exclude, since]))
    return found[0].created_at if found else None
