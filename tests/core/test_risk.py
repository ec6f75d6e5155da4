"""Risk predicates: the questions asked of every quote and venue before anything is decided."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.core.builders import NOW, levels, quote, venue
from trading.core import risk

BOOK = quote("A", bids=levels(("99.00", "1")), asks=levels(("100.00", "1")))


@pytest.mark.parametrize(
    ("received_ts", "stale"),
    [(NOW, False), (NOW - 1_000, False), (NOW - 1_001, True), (NOW + 1_000, False), (NOW + 1_001, True)],
)
def test_a_quote_is_stale_past_its_age_limit_either_way_in_time(received_ts: int, stale: bool) -> None:
    assert risk.is_stale(replace(BOOK, received_ts=received_ts), 1_000, NOW) is stale


def test_the_venue_timestamp_ages_a_quote_when_the_venue_gives_one() -> None:
    late_delivery = replace(BOOK, received_ts=NOW, venue_ts=NOW - 2_000)

    assert risk.is_stale(late_delivery, 1_000, NOW)


def test_the_stricter_of_venue_and_strategy_age_limits_applies() -> None:
    assert risk.quote_age_limit(venue("A", max_quote_age_ms=800), 5_000) == 800
    assert risk.quote_age_limit(venue("A", max_quote_age_ms=8_000), 5_000) == 5_000


@pytest.mark.parametrize(("bid", "crossed"), [("99.99", False), ("100.00", True), ("100.01", True)])
def test_a_book_whose_bid_reaches_its_ask_is_crossed(bid: str, crossed: bool) -> None:
    assert risk.is_crossed(replace(BOOK, bids=levels((bid, "1")))) is crossed


def test_a_venue_marked_down_is_down() -> None:
    assert risk.is_down(venue("A", up=False))
    assert not risk.is_down(venue("A"))
