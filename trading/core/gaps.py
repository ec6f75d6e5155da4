"""Which decisions are new opportunities: one opportunity per crossing at a time, re-armed once its
trade has settled.

A crossing opens when a venue's ask falls below another's bid (fees aside) and lasts while the
books keep crossing. It is one opportunity while that opportunity is being traded. Once its trade
has settled (and the pair's cooldown has passed) the crossing is re-armed: the next book that
still clears the bar opens a new opportunity on it. A rejected crossing that becomes tradeable
opens a new, accepted opportunity too. The listener and the backtest keep their open crossings
and hand each tick's decisions here, so both count the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from trading.core.types import Decision

GapKey = tuple[str, str, str]  # (symbol, buy venue, sell venue)


class GapState(StrEnum):
    REJECTED = "rejected"  # its opportunity was not tradeable
    IN_FLIGHT = "in_flight"  # its opportunity is being traded, or waits out the pair's cooldown
    REARMED = "rearmed"  # its trade settled: a book that still clears the bar trades again


@dataclass(frozen=True, slots=True)
class GapChanges:
    """What one tick did to the open crossings.

    `opened`: decisions that start a new opportunity. `persisting`: open crossings seen again.
    `closed`: open crossings to close, either gone from the ticking venue's pairs or replaced by a
    new, accepted opportunity. `crossings`: how many of `opened` are crossings not open before
    (the rest trade again on a crossing already open).
    """

    opened: tuple[Decision, ...]
    persisting: tuple[GapKey, ...]
    closed: tuple[GapKey, ...]
    crossings: int = 0


def track_gaps(
    open_gaps: Mapping[GapKey, GapState],
    decisions: Sequence[Decision],
    symbol: str,
    changed: frozenset[str],
) -> GapChanges:
    """The changes a tick makes, given the open crossings and their states, and the tick's
    decisions: those on the pairs involving the venues whose `symbol` books changed together
    (one venue's, or every venue that quoted at the same moment)."""
    opened: list[Decision] = []
    persisting: list[GapKey] = []
    closed: list[GapKey] = []
    crossings = 0
    for decision in decisions:
        state = open_gaps.get(decision.key)
        if state is None:
            crossings += 1
        elif decision.accepted and state is not GapState.IN_FLIGHT:
            closed.append(decision.key)
        else:
            persisting.append(decision.key)
            continue
        opened.append(decision)
    seen = {decision.key for decision in decisions}
    closed += [key for key in open_gaps if _involves(key, symbol, changed) and key not in seen]
    return GapChanges(tuple(opened), tuple(persisting), tuple(closed), crossings)


def _involves(key: GapKey, symbol: str, changed: frozenset[str]) -> bool:
    return key[0] == symbol and not changed.isdisjoint(key[1:])
