"""One API key's calls paced across processes through real Redis: every client of the key takes
its turn in one bucket (the ccxt client spending it is in test_ccxt_orders)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from django.conf import settings

from trading.venues.pacing import SharedPacer, bucket_key

MS_PER_TOKEN = 100


API_KEY = "pacing-key-5e1b"


@pytest.fixture
def key(redis_client: redis.Redis) -> str:
    """A key's bucket under this run's prefix (removed afterwards with the run's other keys)."""
    return bucket_key(settings.ARB_PREFIX, "binance", API_KEY)


def turns(*takers: tuple[SharedPacer, float]) -> list[int]:
    """Each (pacer, cost) takes a turn in order, at once; how long each waits, in ms."""

    async def take() -> list[int]:
        try:
            return [await pacer.turn(MS_PER_TOKEN, cost) for pacer, cost in takers]
        finally:
            for pacer in {pacer for pacer, _ in takers}:
                await pacer.close()

    return asyncio.run(take())


def test_clients_of_one_key_in_different_processes_wait_their_turns(key: str) -> None:
    # two pacers stand for two worker processes: they share nothing but Redis
    first, second = SharedPacer(settings.REDIS_URL, key), SharedPacer(settings.REDIS_URL, key)

    waits = turns((first, 1), (second, 1), (first, 1), (second, 3), (first, 1))

    # ccxt's bucket: idle, it holds one token, and a call goes while it is not in debt
    expected = [0, 0, 100, 200, 500]
    assert all(e - 20 <= w <= e + 20 for w, e in zip(waits, expected, strict=True)), waits


def test_another_key_has_its_own_turns_and_no_key_is_written_to_redis(key: str, redis_client) -> None:
    other = bucket_key(settings.ARB_PREFIX, "binance", "another-key")
    waits = turns((SharedPacer(settings.REDIS_URL, key), 5), (SharedPacer(settings.REDIS_URL, other), 1))

    assert waits == [0, 0]
    stored = b" ".join(redis_client.scan_iter(match=f"{settings.ARB_PREFIX}*"))
    assert API_KEY.encode() not in stored
    assert b"rate:binance:" in stored


def test_a_larger_bucket_lets_more_calls_go_at_once(key: str) -> None:
    pacer = SharedPacer(settings.REDIS_URL, key, capacity=3)

    waits = turns(*[(pacer, 1)] * 6)

    assert waits[:4] == [0, 0, 0, 0]
    assert 80 <= waits[4] <= 120, waits
    assert 180 <= waits[5] <= 220, waits
