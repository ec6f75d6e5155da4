"""Any bytes at all become a valid Quote or a named rejection: no exception type escapes.

Hypothesis draws arbitrary bytes, and mutations of valid messages (flipped, inserted, deleted and
spliced bytes, invalid UTF-8, huge numbers, deep nesting), which reach the deeper checks that pure
noise never gets past.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.builders import quotes
from tests.core.test_validate import valid
from trading.core.types import Quote
from trading.core.validate import MAX_MESSAGE_BYTES, REASONS, QuoteRejected, decode_quote, quote_to_payload

EXAMPLES = 1500

# Fragments that are each a known way to break a decoder: invalid or partial UTF-8, escapes of lone
# surrogates, numbers past every range, deep nesting, JSON's other literals, lenient number text.
NASTY = [
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b'"\\ud800"',
    b"\\u0000",
    b"1e999999",
    b"-0",
    b"9" * 40,
    b"[" * 2000,
    b'{"a":' * 2000,
    b"null",
    b"true",
    b"NaN",
    b"Infinity",
    b'" 1 "',
    b'"1_0"',
    "\uff11".encode(),
    b'"+1"',
    b',"extra":1',
    b"\x00",
]


def outcome(raw: bytes) -> Quote | str:
    try:
        return decode_quote(raw)
    except QuoteRejected as rejected:
        return rejected.reason


def holds(raw: bytes) -> None:
    result = outcome(raw)
    assert result in REASONS if isinstance(result, str) else valid(result)


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    payload = quote_to_payload(draw(quotes()))
    payload["seq"] = draw(st.integers(0, 2**64))
    return json.dumps(payload).encode()


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with one to eight edits at drawn places."""
    data = bytearray(draw(valid_messages()))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "nasty", "truncate", "splice"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "nasty":
            data[at : at + draw(st.integers(0, 4))] = draw(st.sampled_from(NASTY))
        elif edit == "truncate":
            del data[at:]
        elif edit == "splice" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 64))]
    return bytes(data)


@settings(max_examples=EXAMPLES)
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_are_rejected_by_name(raw: bytes) -> None:
    holds(raw)


@settings(max_examples=EXAMPLES)
@given(raw=mutated_messages())
def test_mutated_messages_become_valid_quotes_or_named_rejections(raw: bytes) -> None:
    holds(raw)


@settings(max_examples=EXAMPLES // 3)
@given(raw=mutated_messages())
def test_mutated_text_with_lone_surrogates_is_rejected_by_name(raw: bytes) -> None:
    holds(raw.decode("utf-8", "surrogateescape"))  # type: ignore[arg-type]


def test_the_largest_message_is_judged_and_a_larger_one_refused_unread() -> None:
    assert outcome(b"[" * MAX_MESSAGE_BYTES) == "malformed"
    assert outcome(b" " * (MAX_MESSAGE_BYTES + 1)) == "too_large"


def test_invalid_utf8_inside_a_string_is_bad_json() -> None:
    raw = json.dumps(quote_to_payload(decode_quote_example())).encode().replace(b"BTC", b"B\xffC")

    assert outcome(raw) == "bad_json"


def decode_quote_example() -> Quote:
    return decode_quote(
        b'{"venue":"a","symbol":"BTC/USDT","seq":1,"received_ts":1,'
        b'"bids":[["64999.9","1"]],"asks":[["65000.1","1"]]}'
    )
