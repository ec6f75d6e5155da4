"""The ccxt.pro stream adapter's pure parts: ccxt's errors named as stream faults, and Kraken's book
checksums checked on the frames as written."""

from __future__ import annotations

import json
import zlib

import ccxt.pro as ccxtpro
import pytest

from trading.core.streams import StreamEvent
from trading.venues.ccxt_stream import STREAM_DIALECTS, KrakenBooks, fault_kind


@pytest.mark.parametrize(
    ("venue", "error", "kind"),
    [
        ("binance", ccxtpro.ChecksumError("binance BTC/USDT checksum"), StreamEvent.GAP),
        ("kraken", ccxtpro.ChecksumError("kraken BTC/USDT checksum"), StreamEvent.CHECKSUM),
        ("kraken", ccxtpro.InvalidNonce("nonce"), StreamEvent.GAP),
        ("binance", ccxtpro.RequestTimeout("ping-pong keepalive missing"), StreamEvent.STALL),
        (
            "binance",
            ccxtpro.NetworkError("Connection closed by remote server, closing code 1006"),
            StreamEvent.DISCONNECT,
        ),
        ("binance", ccxtpro.ExchangeNotAvailable("503"), StreamEvent.DISCONNECT),
        ("kraken", ccxtpro.BadSymbol("Currency pair not supported"), StreamEvent.ERROR),
    ],
)
def test_ccxt_errors_are_named_as_what_broke_the_stream(
    venue: str, error: Exception, kind: StreamEvent
) -> None:
    assert fault_kind(error, STREAM_DIALECTS[venue]) is kind


def frame(kind: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], checksum: int) -> str:
    """A Kraken v2 book frame, its numbers written as Kraken writes them (JSON numbers)."""
    side = lambda levels: ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels)  # noqa: E731
    data = f'{{"symbol":"BTC/USDT","bids":[{side(bids)}],"asks":[{side(asks)}],"checksum":{checksum}}}'
    return f'{{"channel":"book","type":"{kind}","data":[{data}]}}'


def crc(digits: str) -> int:
    return zlib.crc32(digits.encode())


def test_a_kraken_frame_whose_checksum_matches_the_book_as_written_passes() -> None:
    books = KrakenBooks()
    # asks best first, then bids best first; each number without its point and leading zeros
    snapshot = crc("6401050" + "100000000" + "6400010" + "50000000")
    assert (
        books.check(frame("snapshot", [("64000.10", "0.50000000")], [("64010.50", "1.00000000")], snapshot))
        == []
    )

    # the bid goes (quantity 0) and another comes; trailing zeros count as written
    update = crc("6401050" + "100000000" + "6399990" + "200000000")
    changes = [("64000.10", "0.00000000"), ("63999.90", "2.00000000")]
    assert books.check(frame("update", changes, [], update)) == []


def test_a_kraken_frame_whose_checksum_does_not_match_breaks_its_book() -> None:
    books = KrakenBooks()
    snapshot = crc("6401050" + "100000000" + "6400010" + "50000000")
    books.check(frame("snapshot", [("64000.10", "0.50000000")], [("64010.50", "1.00000000")], snapshot))

    [(symbol, why)] = books.check(frame("update", [("64000.10", "0.40000000")], [], snapshot))

    assert symbol == "BTC/USDT"
    assert f"checksum {snapshot} sent" in why


def test_frames_other_than_books_are_left_alone() -> None:
    books = KrakenBooks()
    assert books.check(json.dumps({"method": "pong", "req_id": 1})) == []
    assert books.check(json.dumps({"channel": "heartbeat"})) == []
    assert books.check("not json") == []
