"""Following one venue's numbered stream of books for one symbol.

A book numbered a little past the last one is taken, and the numbers skipped are messages Pub/Sub
never delivered. A number that goes back, or jumps implausibly far ahead, claims a new stream
(the publisher's counter was reset, or the message is junk): it is refused, and only when the
venue's next books continue from it is the new stream followed. Meanwhile a book that continues
the current stream is taken as usual, so one bad number never blinds the venue.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


class SequenceReason:
    """Why a book's number was refused."""

    OUT_OF_ORDER = "out_of_order"  # at or before the last number: a replay, a late copy, or a restart
    SEQ_JUMP = "seq_jump"  # further ahead than any plausible gap
    UNCONFIRMED = "unconfirmed_stream"  # continues a claimed new stream that is not yet confirmed


@dataclass(frozen=True, slots=True)
class Stream:
    """Where a stream stands: the last number taken, and a claimed new stream, if any."""

    last: int
    claim: int | None = None  # the last number of the claimed new stream
    claim_books: int = 0  # books seen continuing the claim, the one that made it included
    claim_missed: int = 0  # numbers the claim skipped


@dataclass(frozen=True, slots=True)
class Step:
    """The verdict on one book's number, and the stream after it."""

    stream: Stream
    accepted: bool
    missed: int = 0  # messages a gap says were never delivered (counted when taken)
    reason: str = ""  # a SequenceReason when refused
    restarted: bool = False  # this book confirmed a new stream, which is followed from now on


@dataclass(frozen=True, slots=True)
class SequenceRules:
    """`max_gap`: the furthest forward step that is still a gap; `confirmations`: how many books
    in a row a claimed new stream needs (the claiming book counts) before it is followed."""

    max_gap: int = 10_000
    confirmations: int = 2


def follow(stream: Stream | None, seq: int, rules: SequenceRules) -> Step:
    """The verdict on a book numbered `seq` of a stream that stands at `stream` (None: never seen,
    so the first book is taken as it comes)."""
    if stream is None:
        return Step(Stream(seq), accepted=True)
    if stream.last < seq <= stream.last + rules.max_gap:
        return Step(Stream(seq), accepted=True, missed=seq - stream.last - 1)
    if stream.claim is not None and stream.claim < seq <= stream.claim + rules.max_gap:
        return _continue_claim(stream, stream.claim, seq, rules)
    return _claim(stream, seq, rules)


def _claim(stream: Stream, seq: int, rules: SequenceRules) -> Step:
    if rules.confirmations <= 1:
        return Step(Stream(seq), accepted=True, restarted=True)
    reason = SequenceReason.OUT_OF_ORDER if seq <= stream.last else SequenceReason.SEQ_JUMP
    claimed = replace(stream, claim=seq, claim_books=1, claim_missed=0)
    return Step(claimed, accepted=False, reason=reason)


def _continue_claim(stream: Stream, claim: int, seq: int, rules: SequenceRules) -> Step:
    books, missed = stream.claim_books + 1, stream.claim_missed + seq - claim - 1
    if books >= rules.confirmations:
        return Step(Stream(seq), accepted=True, missed=missed, restarted=True)
    claimed = replace(stream, claim=seq, claim_books=books, claim_missed=missed)
    return Step(claimed, accepted=False, reason=SequenceReason.UNCONFIRMED)
