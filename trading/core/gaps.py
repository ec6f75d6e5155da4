"""Which decisions are new opportunities: one opportunity per crossing for as long as it persists.

The listener and the backtest keep the crossings they have open (by key, with whether each was
accepted) and hand each tick's decisions here; both count opportunities the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trading.core.types import Decision

GapKey = tuple[str, str, str]  # (symbol, buy venue, sell venue)


@dataclass(frozen=True, slots=True)
class GapChanges:
    """What one tick did to the open crossings.

    `opened`: decisions that start a new opportunity. `persisting`: open crossings seen again.
    `closed`: open crossings to close, either gone from the ticking venue's pairs or replaced by a
    new, accepted opportunity (a rejected crossing that became tradeable).
    """

    opened: tuple[Decision, ...]
    persisting: tuple[GapKey, ...]
    closed: tuple[GapKey, ...]


def track_gaps(
    open_gaps: Mapping[GapKey, bool], decisions: Sequence[Decision], symbol: str, venue: str
) -> GapChanges:
    """The changes a tick of `venue`'s `symbol` book makes, given the open crossings (key to
    whether it was accepted) and the tick's decisions (all on pairs involving `venue`)."""
    opened: list[Decision] = []
    persisting: list[GapKey] = []
    closed: list[GapKey] = []
    for decision in decisions:
        accepted = open_gaps.get(decision.key)
        if accepted is not None and (accepted or not decision.accepted):
            persisting.append(decision.key)
            continue
        if accepted is not None:
            closed.append(decision.key)
        opened.append(decision)
    seen = {decision.key for decision in decisions}
    closed += [key for key in open_gaps if _involves(key, symbol, venue) and key not in seen]
    return GapChanges(tuple(opened), tuple(persisting), tuple(closed))


def _involves(key: GapKey, symbol: str, venue: str) -> bool:
    return key[0] == symbol and venue in key[1:]
