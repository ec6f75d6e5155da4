"""Following a numbered stream: gaps counted, junk numbers refused without blinding the venue."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from trading.core.sequence import SequenceReason, SequenceRules, Step, Stream, follow

RULES = SequenceRules(max_gap=100, confirmations=2)


def run(seqs: list[int], rules: SequenceRules = RULES) -> list[Step]:
    stream: Stream | None = None
    steps = []
    for seq in seqs:
        step = follow(stream, seq, rules)
        stream = step.stream
        steps.append(step)
    return steps


def test_the_first_book_is_taken_and_a_bounded_gap_counted() -> None:
    steps = run([10, 11, 15])

    assert [step.accepted for step in steps] == [True, True, True]
    assert sum(step.missed for step in steps) == 3


def test_a_step_back_is_refused_and_the_stream_goes_on() -> None:
    steps = run([10, 11, 11, 9, 12])

    assert [step.reason for step in steps] == ["", "", "out_of_order", "out_of_order", ""]
    assert steps[-1].stream.last == 12


def test_a_jump_past_the_bound_is_a_claim_followed_only_when_confirmed() -> None:
    steps = run([10, 500, 501, 503])

    assert [(step.accepted, step.reason) for step in steps] == [
        (True, ""),
        (False, SequenceReason.SEQ_JUMP),
        (True, ""),
        (True, ""),
    ]
    assert steps[2].restarted
    assert steps[3].missed == 1


def test_a_claim_needs_as_many_books_as_configured() -> None:
    steps = run([10, 1, 2, 3], SequenceRules(max_gap=100, confirmations=3))

    assert [step.reason for step in steps] == ["", "out_of_order", "unconfirmed_stream", ""]
    assert steps[3].restarted


def test_one_confirmation_follows_a_claim_at_once() -> None:
    steps = run([10, 1], SequenceRules(max_gap=100, confirmations=1))

    assert steps[1].accepted
    assert steps[1].restarted


@st.composite
def stream_with_junk(draw: st.DrawFn) -> tuple[list[int], list[bool]]:
    """A real stream (forward steps within the bound) with single junk numbers between its
    books, each either behind the stream or past the bound; and which entries are real."""
    seq = draw(st.integers(0, 2**40))
    seqs, real = [seq], [True]
    for _ in range(draw(st.integers(1, 30))):
        if draw(st.booleans()):
            behind = st.integers(0, seq)
            ahead = st.integers(seq + RULES.max_gap + 1, 2**63 - 1)
            seqs.append(draw(behind | ahead))
            real.append(False)
        seq += draw(st.integers(1, RULES.max_gap))
        seqs.append(seq)
        real.append(True)
    return seqs, real


@given(case=stream_with_junk())
def test_single_junk_numbers_never_blind_the_stream_nor_count_as_gaps(
    case: tuple[list[int], list[bool]],
) -> None:
    seqs, real = case
    steps = run(seqs)

    assert [step.accepted for step in steps] == real
    real_seqs = [seq for seq, is_real in zip(seqs, real, strict=True) if is_real]
    expected_missed = sum(b - a - 1 for a, b in itertools.pairwise(real_seqs))
    assert sum(step.missed for step in steps) == expected_missed
    assert not any(step.restarted for step in steps)
