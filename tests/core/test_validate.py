"""Untrusted quote payloads: a valid one becomes a Quote, anything else a named rejection."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import quotes
from trading.core.types import Quote
from trading.core.validate import MAX_LEVELS, REASONS, QuoteRejected, parse_quote, quote_to_payload


def payload(**changes: Any) -> dict[str, Any]:
    """A valid message as a collector publishes it, with `changes` applied (None removes a key)."""
    message: dict[str, Any] = {
        "venue": "binance",
        "symbol": "BTC/USDT",
        "seq": 7,
        "received_ts": 1_700_000_000_123,
        "venue_ts": 1_700_000_000_100,
        "bids": [["64999.90", "0.5"], ["64999.00", "1.25"]],
        "asks": [["65000.10", "0.4"], ["65001.00", "2"]],
    }
    message.update(changes)
    return {key: value for key, value in message.items() if value is not None}


def reason_for(message: Any) -> str:
    with pytest.raises(QuoteRejected) as rejected:
        parse_quote(message)
    return rejected.value.reason


def test_a_valid_payload_becomes_an_exact_quote() -> None:
    quote = parse_quote(payload())

    assert quote == Quote(
        venue="binance",
        symbol="BTC/USDT",
        bids=((Decimal("64999.90"), Decimal("0.5")), (Decimal("64999.00"), Decimal("1.25"))),
        asks=((Decimal("65000.10"), Decimal("0.4")), (Decimal("65001.00"), Decimal("2"))),
        received_ts=1_700_000_000_123,
        seq=7,
        venue_ts=1_700_000_000_100,
    )


def test_a_quote_survives_the_trip_through_json_unchanged() -> None:
    quote = parse_quote(payload())

    assert parse_quote(json.loads(json.dumps(quote_to_payload(quote)))) == quote


def test_numbers_as_json_numbers_are_read_by_their_shortest_spelling() -> None:
    quote = parse_quote(payload(bids=[[64999.9, 0.1]], asks=[[65000, 3]]))

    assert quote.bids == ((Decimal("64999.9"), Decimal("0.1")),)
    assert quote.asks == ((Decimal("65000"), Decimal("3")),)


def test_the_venue_timestamp_is_optional() -> None:
    assert parse_quote(payload(venue_ts=None)).venue_ts is None


def test_only_the_first_levels_are_kept_from_a_very_deep_book() -> None:
    deep = [[str(65000 + i), "1"] for i in range(MAX_LEVELS + 10)]

    assert len(parse_quote(payload(asks=deep)).asks) == MAX_LEVELS


@pytest.mark.parametrize("field", ["venue", "symbol", "seq", "received_ts", "bids", "asks"])
def test_a_missing_field_is_named(field: str) -> None:
    message = payload()
    del message[field]

    assert reason_for(message) == "missing_field"
    assert reason_for(payload(**{field: None})) == "missing_field"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param([1, 2, 3], id="not an object"),
        pytest.param("a quote", id="a string"),
        pytest.param(payload(venue=""), id="empty venue"),
        pytest.param(payload(venue=5), id="numeric venue"),
        pytest.param(payload(symbol="BTCUSDT"), id="symbol without slash"),
        pytest.param(payload(symbol="BTC/USDT/X"), id="symbol with two slashes"),
        pytest.param(payload(symbol=["BTC", "USDT"]), id="symbol as list"),
        pytest.param(payload(seq=-1), id="negative seq"),
        pytest.param(payload(seq="7"), id="seq as string"),
        pytest.param(payload(seq=True), id="seq as bool"),
        pytest.param(payload(received_ts=1.5), id="fractional timestamp"),
        pytest.param(payload(venue_ts="yesterday"), id="venue_ts as text"),
        pytest.param(payload(bids=[]), id="empty bids"),
        pytest.param(payload(bids="64999.90"), id="bids as string"),
        pytest.param(payload(bids=[["64999.90"]]), id="level without amount"),
        pytest.param(payload(bids=[64999.90]), id="level as number"),
        pytest.param(payload(bids=[["sixty", "1"]]), id="price as word"),
        pytest.param(payload(bids=[[True, "1"]]), id="price as bool"),
        pytest.param(payload(bids=[[{"price": 1}, "1"]]), id="price as object"),
        pytest.param(payload(asks=[["65000.10", None]]), id="amount null"),
        pytest.param(payload(asks=[["1" * 40, "1"]]), id="price too long"),
        pytest.param(payload(asks=[[10**5000, "1"]]), id="price a 5000-digit int"),
        pytest.param(payload(asks=[[10**5000]]), id="short level holding a 5000-digit int"),
        pytest.param(payload(venue=10**5000), id="venue a 5000-digit int"),
        pytest.param(payload(asks=[["1e30", "1"]]), id="price out of range"),
        pytest.param(payload(bids=[["64999.90", "1e-30"]]), id="amount out of range"),
        pytest.param(payload(asks=[["1E+16", "1"]]), id="price past the quote table's sixteen digits"),
        pytest.param(payload(bids=[["64999.90", "1E-13"]]), id="amount past twelve decimal places"),
        pytest.param(payload(asks=[["1e99999999999999999999", "1"]]), id="exponent past Decimal's range"),
        pytest.param(payload(seq=2**63), id="seq past 64 bits"),
        pytest.param(payload(received_ts=253_402_300_800_000), id="timestamp past the year 9999"),
        pytest.param(payload(symbol="btc/usdt"), id="lower-case symbol"),
        pytest.param(payload(symbol="BTC /USDT"), id="symbol with a space"),
        pytest.param(payload(symbol="BTC/USDT" + "T" * 20), id="symbol longer than its column"),
        pytest.param(payload(venue="bin ance"), id="venue with a space"),
    ],
)
def test_a_malformed_payload_is_named(message: Any) -> None:
    assert reason_for(message) == "malformed"


@pytest.mark.parametrize("bad", ["NaN", "nan", "Infinity", "-Infinity", "sNaN", float("nan"), float("inf")])
def test_a_number_that_is_not_finite_is_named(bad: Any) -> None:
    assert reason_for(payload(bids=[[bad, "1"]])) == "not_finite"
    assert reason_for(payload(asks=[["65000.10", bad]])) == "not_finite"


@pytest.mark.parametrize("bad", ["0", "-1", "-0.0001", 0, -3, -2.5])
def test_a_price_or_amount_that_is_not_positive_is_named(bad: Any) -> None:
    assert reason_for(payload(bids=[[bad, "1"]])) == "non_positive"
    assert reason_for(payload(asks=[["65000.10", bad]])) == "non_positive"


@pytest.mark.parametrize(
    "lenient",
    [
        " 64999.90",
        "64999.90 ",
        "64999.90\n",
        "64_999.90",
        "+64999.90",
        "\uff16\uff14\uff19\uff19\uff19",  # full-width digits
        "64999,90",
        "0x10",
        "1e",
        "",
    ],
)
def test_a_number_is_plain_ascii_decimal_text_or_nothing(lenient: str) -> None:
    assert reason_for(payload(bids=[[lenient, "1"]])) == "malformed"
    assert reason_for(payload(asks=[["65000.10", lenient]])) == "malformed"


def test_numbers_as_decimal_exponents_and_decimals_are_read_exactly() -> None:
    quote = parse_quote(payload(bids=[["6.49999E+4", "1E-7"]], asks=[[Decimal("65000.10"), Decimal("2")]]))

    assert quote.bids == ((Decimal("64999.9"), Decimal("1E-7")),)
    assert quote.asks == ((Decimal("65000.10"), Decimal("2")),)


def test_a_field_the_schema_does_not_know_is_named() -> None:
    assert reason_for(payload(note="hello")) == "unknown_field"


def test_levels_out_of_order_are_named_unsorted() -> None:
    assert reason_for(payload(bids=[["64999.00", "1"], ["64999.90", "1"]])) == "unsorted"
    assert reason_for(payload(asks=[["65001.00", "1"], ["65000.10", "1"]])) == "unsorted"


@pytest.mark.parametrize("best_bid", ["65000.10", "65000.20"])
def test_a_bid_at_or_above_the_ask_is_named_crossed(best_bid: str) -> None:
    assert reason_for(payload(bids=[[best_bid, "1"]])) == "crossed"


def test_a_rejection_detail_stays_short_however_large_the_junk() -> None:
    with pytest.raises(QuoteRejected) as rejected:
        parse_quote(payload(bids=[["x" * 1_000_000, "1"]]))

    assert len(rejected.value.detail) < 200


# --- properties ---------------------------------------------------------------------------------------


@given(quote=quotes())
def test_every_valid_quote_round_trips_through_its_payload(quote: Quote) -> None:
    assert parse_quote(json.loads(json.dumps(quote_to_payload(quote)))) == quote


json_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["NaN", "Infinity", "-1", "0", "1e999999", "65000.10", "BTC/USDT", "1" * 50, 10**400]),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=8)
    ),
    max_leaves=30,
)


@st.composite
def damaged_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A valid payload with some fields replaced by junk: reaches deeper checks than pure junk."""
    message = payload()
    for field in draw(st.lists(st.sampled_from(sorted(message)), min_size=1, max_size=4)):
        message[field] = draw(json_junk)
    return message


def outcome(message: Any) -> Quote | str:
    """The parsed Quote, or the reason it was rejected; any other exception escapes."""
    try:
        return parse_quote(message)
    except QuoteRejected as rejected:
        return rejected.reason


def valid(quote: Quote) -> bool:
    """What every Quote the validator lets through must be."""
    return (
        quote.best_bid < quote.best_ask
        and all(
            Decimal("1E-12") <= value < Decimal("1E+16")
            for level in quote.bids + quote.asks
            for value in level
        )
        and 0 <= quote.seq < 2**63
    )


@given(message=json_junk | damaged_payloads())
def test_junk_is_rejected_by_name_and_never_raises_anything_else(message: Any) -> None:
    result = outcome(message)

    assert result in REASONS if isinstance(result, str) else valid(result)
