"""One opportunity per persisting crossing: the bookkeeping the listener and the backtest share."""

from __future__ import annotations

from trading.core.gaps import track_gaps
from trading.core.types import Decision

AB = ("BTC/USDT", "a", "b")
CA = ("BTC/USDT", "c", "a")
BC = ("BTC/USDT", "b", "c")


def decision(buy: str, sell: str, accepted: bool = True) -> Decision:
    return Decision("BTC/USDT", buy, sell, accepted, "accepted" if accepted else "below_min_profit")


def test_a_new_crossing_opens_and_one_seen_again_persists() -> None:
    first = track_gaps({}, [decision("a", "b")], "BTC/USDT", "a")
    again = track_gaps({AB: True}, [decision("a", "b")], "BTC/USDT", "b")

    assert ([d.key for d in first.opened], first.persisting, first.closed) == ([AB], (), ())
    assert (again.opened, again.persisting, again.closed) == ((), (AB,), ())


def test_crossings_of_the_ticking_venue_that_are_gone_close_and_others_stay_open() -> None:
    changes = track_gaps({AB: True, CA: False, BC: True}, [], "BTC/USDT", "a")

    assert changes.closed == (AB, CA)  # b-c does not involve a: its books did not change


def test_a_rejected_crossing_that_becomes_tradeable_is_a_new_opportunity() -> None:
    changes = track_gaps({AB: False}, [decision("a", "b", accepted=True)], "BTC/USDT", "a")

    assert [d.key for d in changes.opened] == [AB]
    assert changes.closed == (AB,)


def test_an_accepted_crossing_that_turns_rejected_is_still_the_same_opportunity() -> None:
    changes = track_gaps({AB: True}, [decision("a", "b", accepted=False)], "BTC/USDT", "a")

    assert (changes.opened, changes.persisting, changes.closed) == ((), (AB,), ())


def test_another_symbol_is_left_alone() -> None:
    other = ("ETH/USDT", "a", "b")

    assert track_gaps({other: True}, [], "BTC/USDT", "a").closed == ()
