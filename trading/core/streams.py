"""Streamed books: what makes a venue's streamed book untrusted, when a stream counts as live, what
the collector does for a venue by its feed, and the cross-check of polled against streamed books.

A stream is trusted only while its venue's book is whole: a gap in the venue's update ids, a
checksum that does not match, a stream that goes silent, a dropped connection or a book that
crosses each end the trust at once (the book is marked stale and rebuilt from a fresh snapshot).
Time is passed in, never read from a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import StrEnum

from trading.core.types import BPS, Quote


class Feed(StrEnum):
    """How a venue's books reach us: polled over REST, streamed, or streamed with polling as a
    cross-check."""

    POLL = "poll"
    STREAM = "stream"
    BOTH = "both"


class StreamEvent(StrEnum):
    """What happened to a venue's stream. Every kind but MISMATCH is a fault of the stream itself,
    which marks the venue's book stale and resyncs it; MISMATCH is the cross-check's finding."""

    GAP = "gap"  # the venue's update ids skipped some: diffs were lost
    CHECKSUM = "checksum"  # the book kept no longer matches the venue's checksum of it
    STALL = "stall"  # no frame within the venue's limit
    DISCONNECT = "disconnect"  # the connection (or the snapshot's request) failed
    CROSSED = "crossed"  # the book kept crosses itself
    INVALID = "invalid"  # the book kept fails validation another way
    ERROR = "error"  # the venue refused the subscription, or anything else
    MISMATCH = "mismatch"  # a polled book disagreed with the streamed one


FAULTS = frozenset(StreamEvent) - {StreamEvent.MISMATCH}


class StreamState(StrEnum):
    SYNCING = "syncing"  # (re)connected, waiting for every symbol's first book
    LIVE = "live"  # every symbol's book is whole and current
    STALE = "stale"  # a fault ended the session; its books are withdrawn until the resync


class Collection(StrEnum):
    """What one polling round does for a venue."""

    PUBLISH = "publish"  # poll and publish, as without a stream
    CROSS_CHECK = "cross_check"  # poll and compare with the streamed books, publish nothing
    SKIP = "skip"  # the stream serves the venue: no poll


def collection(feed: str, stream_live: bool) -> Collection:
    """The polling round for a venue fed by `feed`: a venue that streams is polled only while its
    stream is not live (then its polled books are published instead), or, fed by both, polled
    as a cross-check while it is."""
    if feed == Feed.POLL or not stream_live:
        return Collection.PUBLISH
    return Collection.CROSS_CHECK if feed == Feed.BOTH else Collection.SKIP


def stream_live(beat: Mapping[str, object] | None, now_ms: int, max_age_ms: int) -> bool:
    """Whether a venue's stream heartbeat says its stream is live: written no longer than
    `max_age_ms` ago, in the live state."""
    if beat is None or beat.get("state") != StreamState.LIVE:
        return False
    at_ms = beat.get("at_ms")
    return isinstance(at_ms, int) and now_ms - at_ms <= max_age_ms


def stalled(last_frame_ms: int, now_ms: int, limit_ms: int) -> bool:
    """Whether a stream whose last frame came at `last_frame_ms` has been silent past its limit."""
    return now_ms - last_frame_ms > limit_ms


def resync_delay_s(faults_in_a_row: int, cap_s: float) -> float:
    """The wait before the resync after the n-th fault in a row (with no live spell between):
    none after the first, so a single fault costs the least time blind; then 0.5, 1, 2 ... s,
    up to `cap_s`."""
    if faults_in_a_row <= 1:
        return 0.0
    return min(0.5 * 2.0 ** min(faults_in_a_row - 2, 30), cap_s)


def venue_stamp(venue_ts: int | None, last_ms: int | None) -> int | None:
    """The venue stamp to publish a streamed book with: the venue's, unless it is older than the
    moment of the stream's book published before it (ccxt stamps a snapshot with nothing, that is
    with our receipt of it, and the first diffs after it with the venue's earlier event times):
    such a book is stamped with its receipt instead, as the snapshot was, so it is not refused
    as an older snapshot."""
    if venue_ts is None or last_ms is None or venue_ts >= last_ms:
        return venue_ts
    return None


def gap_bps(polled: Quote, streamed: Quote) -> Decimal:
    """How far apart two books of one venue are: the larger move of the best bid and best ask
    between them, in bps of the polled book's mid."""
    mid = (polled.best_bid + polled.best_ask) / 2
    moved = max(abs(polled.best_bid - streamed.best_bid), abs(polled.best_ask - streamed.best_ask))
    return moved / mid * BPS


def disagreement(polled: Quote, streamed: Quote, tolerance_bps: Decimal) -> Decimal | None:
    """The gap (bps) between a polled book and the streamed one kept for its venue when it is past
    `tolerance_bps`, else None. However old the streamed book is, it stands for the venue's
    book while its stream is live (an unchanged book sends no diff)."""
    gap = gap_bps(polled, streamed)
    return gap if gap > tolerance_bps else None


def repeated_faults(kinds: Iterable[str], limit: int) -> int | None:
    """How many of the events `kinds` (those of a window) are faults, when at least `limit`."""
    faults = sum(1 for kind in kinds if kind in FAULTS)
    return faults if faults >= limit else None
