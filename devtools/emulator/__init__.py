"""A local exchange emulator: a real HTTP server on 127.0.0.1 speaking real venues' dialects.

Tests and offline runs point the real ccxt client at it (Venue.api_url = emulator.url_for(name)),
so the client's requests, parsing and error handling are exercised without the internet.
"""

from __future__ import annotations

from collections.abc import Mapping

from devtools.emulator import binance, kraken
from devtools.emulator.server import Dialect, Emulator, Reply, Request
from devtools.emulator.venue import DEFAULT_MARKETS, Fault, Market

DIALECTS: Mapping[str, Dialect] = {"binance": binance, "kraken": kraken}


def emulate(*venues: str, port: int = 0) -> Emulator:
    """An emulator (not started) hosting `venues`, each named after the dialect it speaks;
    every dialect when none are named."""
    names = venues or tuple(DIALECTS)
    return Emulator({name: DIALECTS[name] for name in names}, port=port)


__all__ = [
    "DEFAULT_MARKETS",
    "DIALECTS",
    "Dialect",
    "Emulator",
    "Fault",
    "Market",
    "Reply",
    "Request",
    "emulate",
]
