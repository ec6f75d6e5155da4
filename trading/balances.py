"""The ledger in the database: Balance rows moved by the core ledger's movements.

Every change to a balance goes through `apply`, which locks the rows it touches in one fixed order
(venue, then asset) before it changes them, so two transactions moving the same balances wait for
each other instead of deadlocking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import F, Q

from trading.core.ledger import Movement
from trading.models import Balance, Venue


def lock(*venues: Venue) -> None:
    """Hold every balance row of `venues` until the transaction ends, in the order `apply` locks:
    trades that touch a venue in common run their checks one at a time."""
    list(Balance.objects.select_for_update().filter(venue__in=venues).order_by("venue_id", "asset"))


def apply(movements: Iterable[Movement], venues: Iterable[Venue]) -> None:
    """Move balances by `movements` (their venues named among `venues`), creating rows that are
    missing. Call inside a transaction."""
    by_name = {venue.name: venue for venue in venues}
    totals: defaultdict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for movement in movements:
        total = totals[(by_name[movement.venue].pk, movement.asset)]
        total[0] += movement.free
        total[1] += movement.locked
    changes = {key: change for key, change in totals.items() if change[0] or change[1]}
    if not changes:
        return
    rows = Q()
    for venue_id, asset in changes:
        rows |= Q(venue_id=venue_id, asset=asset)
    locked = Balance.objects.select_for_update().filter(rows).order_by("venue_id", "asset")
    missing = set(changes) - set(locked.values_list("venue_id", "asset"))
    if missing:
        Balance.objects.bulk_create(
            [Balance(venue_id=venue_id, asset=asset) for venue_id, asset in sorted(missing)],
            ignore_conflicts=True,
        )
        list(locked)
    for (venue_id, asset), (free, held) in sorted(changes.items()):
        Balance.objects.filter(venue_id=venue_id, asset=asset).update(
            free=F("free") + free, locked=F("locked") + held
        )
