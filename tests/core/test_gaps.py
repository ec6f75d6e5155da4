"""One opportunity per crossing at a time, re-armed once its trade settled: the bookkeeping the listener
and the backtest share."""

from __future__ import annotations

from trading.core.gaps import GapState, track_gaps
from trading.core.types import Decision

AB = ("BTC/USDT", "a", "b")
CA = ("BTC/USDT", "c", "a")
BC = ("BTC/USDT", "b", "c")


def decision(buy: str, sell: str, accepted: bool = True) -> Decision:
    return Decision("BTC/USDT", buy, sell, accepted, "accepted" if accepted else "below_min_profit")


def test_a_new_crossing_opens_and_one_seen_again_persists() -> None:
    first = track_gaps({}, [decision("a", "b")], "BTC/USDT", frozenset({"a"}))
    again = track_gaps({AB: GapState.IN_FLIGHT}, [decision("a", "b")], "BTC/USDT", frozenset({"b"}))

    assert ([d.key for d in first.opened], first.persisting, first.closed) == ([AB], (), ())
    assert first.crossings == 1
    assert (again.opened, again.persisting, again.closed, again.crossings) == ((), (AB,), (), 0)


def test_crossings_of_the_ticking_venue_that_are_gone_close_and_others_stay_open() -> None:
    changes = track_gaps(
        {AB: GapState.IN_FLIGHT, CA: GapState.REJECTED, BC: GapState.IN_FLIGHT},
        [],
        "BTC/USDT",
        frozenset({"a"}),
    )

    assert changes.closed == (AB, CA)  # b-c does not involve a: its books did not change


def test_a_rejected_crossing_that_becomes_tradeable_is_a_new_opportunity() -> None:
    changes = track_gaps(
        {AB: GapState.REJECTED}, [decision("a", "b", accepted=True)], "BTC/USDT", frozenset({"a"})
    )

    assert [d.key for d in changes.opened] == [AB]
    assert changes.closed == (AB,)
    assert changes.crossings == 0  # the same crossing, now worth trading


def test_an_accepted_crossing_that_turns_rejected_is_still_the_same_opportunity() -> None:
    changes = track_gaps(
        {AB: GapState.IN_FLIGHT}, [decision("a", "b", accepted=False)], "BTC/USDT", frozenset({"a"})
    )

    assert (changes.opened, changes.persisting, changes.closed) == ((), (AB,), ())


def test_another_symbol_is_left_alone() -> None:
    other = ("ETH/USDT", "a", "b")

    assert track_gaps({other: GapState.IN_FLIGHT}, [], "BTC/USDT", frozenset({"a"})).closed == ()


def test_a_crossing_whose_trade_settled_trades_again_while_it_still_clears_the_bar() -> None:
    changes = track_gaps({AB: GapState.REARMED}, [decision("a", "b")], "BTC/USDT", frozenset({"b"}))

    assert [d.key for d in changes.opened] == [AB]
    assert changes.closed == (AB,)
    assert changes.crossings == 0


def test_a_re_armed_crossing_that_no_longer_clears_the_bar_waits_without_a_new_opportunity() -> None:
    changes = track_gaps(
        {AB: GapState.REARMED}, [decision("a", "b", accepted=False)], "BTC/USDT", frozenset({"b"})
    )

    assert (changes.opened, changes.persisting, changes.closed) == ((), (AB,), ())
