"""Streamed books' rules: what the collector does by feed, when a stream is live or stalled, how
resyncs back off, how a streamed book is stamped, the cross-check, and the stale mark's wire form."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import NOW, levels, quote
from trading.core.streams import (
    FAULTS,
    Collection,
    Feed,
    StreamEvent,
    StreamState,
    collection,
    disagreement,
    repeated_faults,
    resync_delay_s,
    stalled,
    stream_live,
    venue_stamp,
)
from trading.core.types import Quote, StaleMark
from trading.core.validate import QuoteRejected, decode_price_event, quote_to_payload, stale_to_payload


@pytest.mark.parametrize(
    ("feed", "live", "expected"),
    [
        (Feed.POLL, False, Collection.PUBLISH),
        (Feed.POLL, True, Collection.PUBLISH),
        (Feed.STREAM, True, Collection.SKIP),
        (Feed.STREAM, False, Collection.PUBLISH),
        (Feed.BOTH, True, Collection.CROSS_CHECK),
        (Feed.BOTH, False, Collection.PUBLISH),
    ],
)
def test_a_streamed_venue_is_polled_in_its_streams_place_only_while_the_stream_is_not_live(
    feed: Feed, live: bool, expected: Collection
) -> None:
    assert collection(feed, live) is expected


def test_a_stream_is_live_only_by_a_recent_heartbeat_that_says_so() -> None:
    beat = {"state": StreamState.LIVE.value, "at_ms": NOW}

    assert stream_live(beat, NOW + 5_000, max_age_ms=5_000)
    assert not stream_live(beat, NOW + 5_001, max_age_ms=5_000)
    assert not stream_live({**beat, "state": "stale"}, NOW, max_age_ms=5_000)
    assert not stream_live({**beat, "state": "syncing"}, NOW, max_age_ms=5_000)
    assert not stream_live({"state": "live"}, NOW, max_age_ms=5_000)
    assert not stream_live(None, NOW, max_age_ms=5_000)


def test_a_stream_stalls_once_silent_past_its_limit() -> None:
    assert not stalled(NOW, NOW + 3_000, limit_ms=3_000)
    assert stalled(NOW, NOW + 3_001, limit_ms=3_000)


def test_the_first_resync_is_at_once_and_faults_in_a_row_back_off_to_the_cap() -> None:
    assert [resync_delay_s(n, cap_s=4) for n in range(1, 8)] == [0, 0.5, 1, 2, 4, 4, 4]


def test_a_streamed_book_keeps_the_venues_stamp_unless_it_is_older_than_the_last_published() -> None:
    assert venue_stamp(None, NOW) is None
    assert venue_stamp(NOW, None) == NOW
    assert venue_stamp(NOW + 1, NOW) == NOW + 1
    assert venue_stamp(NOW, NOW) == NOW
    # The snapshot went out stamped with its receipt; the first diff's event time came before.
    assert venue_stamp(NOW - 3, NOW) is None


def test_a_polled_book_disagrees_with_the_streamed_one_past_the_tolerance() -> None:
    polled = quote("a", levels(("30000", "1")), levels(("30010", "1")))
    close = quote("a", levels(("29999", "1")), levels(("30010", "1")))
    apart = quote("a", levels(("30000", "1")), levels(("30050", "1")))  # a ghost ask, 40 away

    assert disagreement(polled, close, Decimal(10)) is None
    gap = disagreement(polled, apart, Decimal(10))
    assert gap is not None
    assert round(gap, 2) == Decimal("13.33")


def test_only_faults_count_towards_a_repeating_fault() -> None:
    kinds = ["gap", "mismatch", "stall", "mismatch", "checksum"]

    assert repeated_faults(kinds, 3) == 3
    assert repeated_faults(kinds, 4) is None
    assert StreamEvent.MISMATCH not in FAULTS


def test_a_stale_mark_travels_on_the_price_channel_and_reads_back() -> None:
    mark = StaleMark("binance", "BTC/USDT", "checksum", NOW)

    assert decode_price_event(json.dumps(stale_to_payload(mark))) == mark


def test_a_book_still_decodes_as_a_book() -> None:
    book = quote("a", levels(("30000", "1")), levels(("30010", "1")))

    assert decode_price_event(json.dumps(quote_to_payload(book))) == book


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"venue": "binance", "symbol": "BTC/USDT", "stale": "gap"}, "unknown_field"),
        ({"venue": "binance", "symbol": "BTC/USDT", "stale": "gap", "at_ms": NOW, "x": 1}, "unknown_field"),
        ({"venue": "binance", "symbol": "btc/usdt", "stale": "gap", "at_ms": NOW}, "malformed"),
        ({"venue": "binance", "symbol": "BTC/USDT", "stale": "GAP!", "at_ms": NOW}, "unknown_field"),
    ],
)
def test_a_malformed_stale_mark_is_rejected_as_the_book_it_is_not(payload: dict, reason: str) -> None:
    with pytest.raises(QuoteRejected) as rejected:
        decode_price_event(json.dumps(payload))

    assert rejected.value.reason == reason


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_message_is_a_book_a_stale_mark_or_a_named_rejection(raw: bytes | str) -> None:
    try:
        event: Quote | StaleMark | QuoteRejected = decode_price_event(raw)
    except QuoteRejected as rejected:
        event = rejected
    assert isinstance(event, Quote | StaleMark) or event.reason
