"""Freshness: a symbol's book and a process's heartbeat count only while recent enough."""

from __future__ import annotations

from trading.core.freshness import alive, stale_symbols


def test_a_symbol_is_stale_when_never_seen_or_older_than_the_limit() -> None:
    assert stale_symbols({"BTC/USDT": 4_999, "ETH/USDT": 5_001, "SOL/USDT": None}, 5_000) == [
        "ETH/USDT",
        "SOL/USDT",
    ]


def test_a_heartbeat_older_than_the_limit_counts_as_missing() -> None:
    beats = {"a": {"at_ms": 10_000}, "b": {"at_ms": 4_000}}
    assert alive(beats, now=12_000, max_age_ms=5_000) == ["a"]
