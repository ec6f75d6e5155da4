"""A local exchange emulator: a real HTTP server on 127.0.0.1 speaking real venues' dialects, and
a websocket server streaming their books.

Tests and offline runs point the real ccxt client at it (Venue.api_url = emulator.url_for(name)),
and ccxt.pro's at its streams (emulator.stream_url_for(name)), so the clients' requests, parsing
and error handling are exercised without the internet.
"""

from __future__ import annotations

from collections.abc import Mapping

from devtools.emulator import binance, binance_ws, kraken, kraken_ws
from devtools.emulator.rest import Dialect, Reply, Request
from devtools.emulator.server import Emulator
from devtools.emulator.streams import SentFrame, StreamDialect, StreamFault
from devtools.emulator.venue import DEFAULT_MARKETS, Fault, Market

DIALECTS: Mapping[str, Dialect] = {"binance": binance, "kraken": kraken}
STREAM_DIALECTS: Mapping[str, StreamDialect] = {"binance": binance_ws, "kraken": kraken_ws}


def emulate(*venues: str, port: int = 0, stream_port: int = 0) -> Emulator:
    """An emulator (not started) hosting `venues`, each named after the dialect it speaks and
    streaming its books in that dialect; every dialect when none are named."""
    names = venues or tuple(DIALECTS)
    streams = {name: STREAM_DIALECTS[name] for name in names if name in STREAM_DIALECTS}
    return Emulator(
        {name: DIALECTS[name] for name in names}, streams=streams, port=port, stream_port=stream_port
    )


__all__ = [
    "DEFAULT_MARKETS",
    "DIALECTS",
    "STREAM_DIALECTS",
    "Dialect",
    "Emulator",
    "Fault",
    "Market",
    "Reply",
    "Request",
    "SentFrame",
    "StreamDialect",
    "StreamFault",
    "emulate",
]
