"""What the trade path reads and writes between a decision and its orders, in as few statements as
it takes.

The ORM spends a millisecond or more building each query; between a decision and its orders a
few dozen of them would cost more than the gaps last. These statements go straight through
Django's connection (PostgreSQL, or SQLite for the quick demo), several to a round trip on
PostgreSQL (`fetch_each`), and rows come back as models with their column values converted as the
ORM converts them on either database (`_as`). Everything here runs inside the re-check's
transaction, except the opportunity's session lock (`Lock`); the locks named are PostgreSQL's
(SQLite runs one writing transaction at a time, which orders them the same way).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID
from weakref import WeakKeyDictionary

from django.db import connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import Model
from django.utils import timezone
from psycopg import pq

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
ADVISORY_LOCKS = 0x4152  # the namespace of our PostgreSQL advisory locks: one per opportunity
M = TypeVar("M", bound=Model)
Converter = Callable[[Any, Any, BaseDatabaseWrapper], Any]
# A statement's parameter: a value the database driver adapts.
Param = bool | int | float | Decimal | str | bytes | date | UUID | None
Statement = tuple[str, Sequence[Param]]  # SQL and its parameters
# Per database session (psycopg connection): the SQL of each statement prepared there, and its name.
_PREPARED: WeakKeyDictionary[Any, dict[str, str]] = WeakKeyDictionary()
_STATEMENT_NAMES = itertools.count()
_CONVERTERS: WeakKeyDictionary[BaseDatabaseWrapper, dict[type[Model], list[list[Converter]]]] = (
    WeakKeyDictionary()
)


def _locking(clause: str) -> str:
    return f" {clause}" if connection.vendor == "postgresql" else ""


def fetch_each(statements: Sequence[Statement], *, prepared: bool = False) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows (none for one that returns none), in order. On PostgreSQL they go as
    one request, executed one after another by the server: one round trip however many there are.
    `prepared`: each statement is planned once per database session and executed by name after
    (the statements of the trade path are the same every time; planning them is most of the
    server's work)."""
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            results = []
            for sql, params in statements:
                cursor.execute(sql, params)
                results.append(cursor.fetchall())
            return results
        session = _PREPARED.setdefault(cursor.connection, {})
        texts, preparing = [], {}
        for sql, params in statements:
            name = session.get(sql) if prepared else None
            if prepared and name is None:
                name = preparing[sql] = f"arb_{next(_STATEMENT_NAMES)}"
                texts.append(f"PREPARE {name} AS {_numbered(sql)}")
            texts.append(sql if name is None else f"EXECUTE {name}" + _arguments(len(params)))
        cursor.execute("; ".join(texts), [value for _, params in statements for value in params])
        results = [_rows(cursor)]
        while cursor.nextset():
            results.append(_rows(cursor))
        session.update(preparing)  # only once the request went through: a failed one names anew
        return [rows for rows, text in zip(results, texts, strict=True) if not text.startswith("PREPARE ")]


def _numbered(sql: str) -> str:
    """`sql` with its placeholders numbered, as PREPARE takes them: %s, %s -> $1, $2."""
    numbers = itertools.count(1)
    return re.sub("%s", lambda _: f"${next(numbers)}", sql)


def _arguments(count: int) -> str:
    return f"({', '.join(['%s'] * count)})" if count else ""


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    # The result's status, not `cursor.description`, which builds an object for every column.
    return cursor.fetchall() if cursor.pgresult.status == pq.ExecStatus.TUPLES_OK else []


@functools.cache
def _model_columns(model: type[Model], alias: str, vendor: str) -> str:
    qualify = f"{alias}." if alias else ""
    return ", ".join(qualify + connection.ops.quote_name(f.column) for f in model._meta.concrete_fields)


def _columns(model: type[Model], alias: str = "") -> str:
    """`model`'s columns in the order of its concrete fields, each under `alias` when given."""
    return _model_columns(model, alias, connection.vendor)


def _as(model: type[M], values: Sequence[Any]) -> M:
    """The `model` row whose columns (`_columns`' order) hold `values`, converted as the ORM
    converts them; the converters are looked up once per model and connection."""
    fields, wrapper = model._meta.concrete_fields, connections[connection.alias]
    by_model = _CONVERTERS.setdefault(wrapper, {})
    converters = by_model.get(model)
    if converters is None:
        converters = by_model[model] = [
            # Field.get_db_converters is Django's (the field's from_db_value), missing from django-stubs.
            [*wrapper.ops.get_db_converters(f.cached_col), *f.get_db_converters(wrapper)]  # type: ignore[attr-defined]
            for f in fields
        ]
    converted = []
    for column, value, convert in zip(fields, values, converters, strict=True):
        for converter in convert:
            value = converter(value, column.cached_col, wrapper)
        converted.append(value)
    return model.from_db(wrapper.alias, [f.attname for f in fields], converted)


class Busy(Exception):
    """Another session holds the opportunity's lock: another worker is on it."""


@dataclass
class Lock:
    """This session's lock on one opportunity: a PostgreSQL advisory lock at session level, so it
    is held across transactions until released, and dropped with the session of a worker that
    dies. Taken by `acquire`, or by a `claim` made with it, in the claim's round trip. Without
    PostgreSQL it is always held: the claim and the lease keep a trade to one worker there."""

    opportunity_id: int
    held: bool = field(default_factory=lambda: connection.vendor != "postgresql")
    asked: bool = False  # a request for it went out (whatever became of it)

    def request(self) -> Statement:
        self.asked = True
        return "SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_LOCKS, self.opportunity_id]

    def acquire(self) -> bool:
        if not self.held:
            [[(taken,)]] = fetch_each([self.request()])
            self.held = bool(taken)
        return self.held

    def release(self) -> None:
        """Let the lock go if it may be held (a request whose answer was lost included)."""
        if connection.vendor == "postgresql" and (self.held or self.asked):
            fetch_each([("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCKS, self.opportunity_id])])
        self.held = self.asked = False


class NotRecorded(Exception):
    """No opportunity has the id: its task came before its row (trading.listener writes the row
    after queueing the task), or it was never recorded."""


@dataclass(frozen=True)
class Claimed:
    """The claimed opportunity with its venues and strategy in place, the deployment's key, the
    balance rows of both venues (locked) and the guards in force."""

    opportunity: Opportunity
    strategy: StrategyConfig
    deployment: str
    balances: dict[tuple[int, str], Balance]
    guards: Guards


def claim(opportunity_id: int, lock: Lock | None = None) -> Claimed | None:
    """Move a dispatched opportunity to executing and load it with its two venues and its
    strategy (the active one when it has none); lock the balance rows of both venues, in the one
    order every writer of balances locks them (trading.balances), so that trades with a venue in
    common run their re-checks one at a time; then read the guards (`guards`). One round trip on
    PostgreSQL, with the opportunity's `lock` (when given) taken first if it is not held yet:
    Busy (roll the transaction back) when another session holds it. None when the opportunity is
    not (or no longer) dispatched; NotRecorded when there is no such opportunity. Until the
    transaction commits nobody sees the claim: it commits with the orders, or with the reason
    none are sent."""
    status = Opportunity.Status
    venue_ids = (
        "SELECT o.buy_venue_id FROM trading_opportunity o WHERE o.id = %s "
        "UNION SELECT o.sell_venue_id FROM trading_opportunity o WHERE o.id = %s"
    )
    taking = [] if lock is None or lock.held else [lock.request()]
    now = timezone.now()
    # The row is read before it is claimed (each statement sees what was committed when it began):
    # a row written between the two, its task having come first, is then one not recorded yet, to
    # be waited for, never one recorded but not claimable.
    *taken, loaded, claimed, balances, guarded = fetch_each(
        [
            *taking,
            (
                f"SELECT {_columns(Opportunity, 'o')}, {_columns(Venue, 'b')}, {_columns(Venue, 'v')}, "
                f"{_columns(StrategyConfig, 's')}, (SELECT d.key FROM trading_deployment d WHERE d.id = 1) "
                "FROM trading_opportunity o JOIN trading_venue b ON b.id = o.buy_venue_id "
                "JOIN trading_venue v ON v.id = o.sell_venue_id LEFT JOIN trading_strategyconfig s "
                "ON s.id = o.strategy_id OR (o.strategy_id IS NULL AND s.active) WHERE o.id = %s",
                [opportunity_id],
            ),
            (
                "UPDATE trading_opportunity SET status = %s, updated_at = %s WHERE id = %s AND status = %s "
                "RETURNING id",
                [status.EXECUTING, now, opportunity_id, status.DISPATCHED],
            ),
            (
                f"SELECT {_columns(Balance)} FROM trading_balance WHERE venue_id IN ({venue_ids}) "
                "ORDER BY venue_id, asset" + _locking("FOR UPDATE"),
                [opportunity_id, opportunity_id],
            ),
            (GUARDS + _locking("FOR SHARE OF k"), [LIMITS, KILL_SWITCH]),
        ],
        prepared=True,
    )
    if lock is not None and taken:
        lock.held = bool(taken[0][0][0])
        if not lock.held:
            raise Busy(f"opportunity {opportunity_id} is held by another worker")
    if not loaded:
        raise NotRecorded(f"opportunity {opportunity_id} is not recorded (yet)")
    if not claimed:
        return None
    opportunity, strategy = _loaded(loaded)
    opportunity.status, opportunity.updated_at = status.EXECUTING, now
    rows = [_as(Balance, values) for values in balances]
    return Claimed(
        opportunity,
        strategy,
        loaded[0][-1] or Deployment.current_key(),
        {(row.venue_id, row.asset): row for row in rows},
        _guards(guarded) if guarded else guards(),
    )


def _loaded(rows: Sequence[Sequence[Any]]) -> tuple[Opportunity, StrategyConfig]:
    """The opportunity with its venues and strategy in place from `claim`'s second statement, and
    that strategy. Raises ValueError unless exactly one strategy applies."""
    sizes = [len(model._meta.concrete_fields) for model in (Opportunity, Venue, Venue)]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    strategies = len(rows) if rows[0][ends[2]] is not None else 0
    if strategies != 1:
        raise ValueError(f"opportunity {rows[0][0]}: {strategies} strategies apply, not one")
    row = rows[0]
    opportunity = _as(Opportunity, row[: ends[0]])
    opportunity.buy_venue = _as(Venue, row[ends[0] : ends[1]])
    opportunity.sell_venue = _as(Venue, row[ends[1] : ends[2]])
    opportunity.strategy = strategy = _as(StrategyConfig, row[ends[2] : -1])
    return opportunity, strategy


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


GUARDS = (
    "SELECT k.tripped_at IS NOT NULL, k.reason, CAST(r.max_trade_notional AS TEXT), "
    "CAST(r.max_open_exposure AS TEXT), CAST(r.daily_loss_limit AS TEXT), "
    "r.pair_cooldown_seconds, p.venue_id "
    "FROM trading_killswitch k JOIN trading_risklimits r ON r.id = %s "
    "LEFT JOIN trading_risklimits_paused_venues p ON p.risklimits_id = r.id WHERE k.id = %s"
)


def guards() -> Guards:
    """The kill switch and the limits in one statement, the switch read under a share lock held
    to the end of the transaction: a trip waits for trades already past this read, and a read
    during a trip waits for it. Rows missing on a fresh database are created first."""
    [rows] = fetch_each([(GUARDS + _locking("FOR SHARE OF k"), [LIMITS, KILL_SWITCH])])
    if not rows:
        KillSwitch.objects.get_or_create(pk=KILL_SWITCH)
        RiskLimits.current()
        return guards()
    return _guards(rows)


def _guards(rows: Sequence[Sequence[Any]]) -> Guards:
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


def orders_that_may_hold(base: str, statuses: Sequence[str]) -> list[tuple[Order, str]]:
    """The `base` orders of every opportunity in `statuses`, each with its venue's name."""
    placeholders = ", ".join(["%s"] * len(statuses))
    [rows] = fetch_each(
        [
            (
                f"SELECT {_columns(Order, 'o')}, v.name FROM trading_order o "
                "JOIN trading_opportunity p ON p.id = o.opportunity_id "
                "JOIN trading_venue v ON v.id = o.venue_id "
                f"WHERE p.status IN ({placeholders}) AND o.symbol LIKE %s",
                [*statuses, f"{base}/%"],
            )
        ]
    )
    return [(_as(Order, row[:-1]), row[-1]) for row in rows]


def insert(rows: Sequence[Model], then: Sequence[Statement] = (), *, prepared: bool = False) -> None:
    """Insert new rows of one model in one statement (auto_now fields stamped, values converted as
    the ORM converts them), setting their primary keys unless all of them have one already; the
    statements `then` follow it in the same round trip (`prepared`: see `fetch_each`)."""
    model, keyed = type(rows[0]), all(row.pk is not None for row in rows)
    fields = [field for field in model._meta.concrete_fields if keyed or not field.primary_key]
    values, params = [], []
    for row in rows:
        values.append("(" + ", ".join(["%s"] * len(fields)) + ")")
        params += [field.get_db_prep_save(field.pre_save(row, add=True), connection) for field in fields]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    table, pk = model._meta.db_table, model._meta.pk.column
    sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join(values)} RETURNING {pk}"
    keys, *_ = fetch_each([(sql, params), *then], prepared=prepared)
    for row, (key,) in zip(rows, keys, strict=True):
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


def holding(
    rows: dict[tuple[int, str], Balance], venues: dict[str, Venue], movements: Sequence[Movement]
) -> Statement | None:
    """The one statement that moves the locked balance `rows` by `movements`. None when a
    movement's row does not exist: the caller moves balances the general way then."""
    changes: dict[int, tuple[Decimal, Decimal]] = {}
    for movement in movements:
        row = rows.get((venues[movement.venue].pk, movement.asset))
        if row is None:
            return None
        free, locked = changes.get(row.pk, (Decimal(0), Decimal(0)))
        changes[row.pk] = (free + movement.free, locked + movement.locked)
    free_cases = " ".join("WHEN %s THEN CAST(%s AS NUMERIC)" for _ in changes)
    ids = ", ".join(["%s"] * len(changes))
    sql = (
        f"UPDATE trading_balance SET free = free + CASE id {free_cases} END, "
        f"locked = locked + CASE id {free_cases} END, updated_at = %s WHERE id IN ({ids})"
    )
    params: list[Param] = [value for pk, (free, _) in changes.items() for value in (pk, free)]
    params += [value for pk, (_, locked) in changes.items() for value in (pk, locked)]
    return sql, [*params, timezone.now(), *changes]


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
