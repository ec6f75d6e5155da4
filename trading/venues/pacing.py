"""Rate limits shared by every process that uses one API key.

ccxt paces the calls of one client, but a venue counts the calls of a key, whichever worker makes
them, and each leg, retry and hedge opens its own client. A SharedPacer keeps the key's token
bucket in Redis instead: ccxt's own model (a token every `ms_per_token`, each call costing its
endpoint's weight, a call going ahead while the bucket is not in debt), one bucket per key
across all processes. The key itself never reaches Redis, only a digest of it.
"""

from __future__ import annotations

import asyncio
import hashlib

import redis.asyncio as aioredis

# The bucket in a hash {tokens, at}. Returns how long the caller waits, in ms, for its turn; its
# cost is taken at once, so the next caller waits behind it. Redis's clock times every caller.
TAKE_TURN = """
local ms_per_token = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) / ms_per_token)
local wait = 0
if tokens < 0 then
    wait = -tokens * ms_per_token
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) * ms_per_token) + 1000)
return math.ceil(wait)
"""


def bucket_key(prefix: str, ccxt_id: str, api_key: str) -> str:
    """The Redis key of `api_key`'s bucket on `ccxt_id`, naming a digest of the key, not the key."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"{prefix}rate:{ccxt_id}:{digest}"


class SharedPacer:
    """The turn-taker of one key's calls: `await pacer.wait(ms_per_token, cost)` before each."""

    def __init__(self, redis_url: str, key: str, capacity: float = 1.0) -> None:
        self.key = key
        self.capacity = capacity
        self._client = aioredis.from_url(redis_url)
        self._take_turn = self._client.register_script(TAKE_TURN)

    async def turn(self, ms_per_token: float, cost: float | None = None) -> int:
        """Take the next turn; how many ms until it comes."""
        spend = 1 if cost is None else cost
        return int(await self._take_turn(keys=[self.key], args=[ms_per_token, spend, self.capacity]))

    async def wait(self, ms_per_token: float, cost: float | None = None) -> None:
        """Wait for the next turn of the key."""
        wait_ms = await self.turn(ms_per_token, cost)
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000)

    async def close(self) -> None:
        await self._client.aclose()
