"""The stream benchmark's bare websocket client process: it subscribes to the emulator's Binance
and Kraken book streams with aiohttp and only parses each frame's JSON. It imports no Django, so it
starts fast under `spawn`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

# Each venue's stream path below its websocket root, and the subscription to its BTC/USDT book.
SUBSCRIPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "binance": ("/ws/0", {"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 1}),
    "kraken": (
        "/v2",
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USDT"], "depth": 10},
            "req_id": 1,
        },
    ),
}
Counted = tuple[int, int, int]  # book updates parsed, monotonic ns of the first and of the last


def is_book_update(message: Any) -> bool:
    """Whether a parsed frame is a change of a book (Binance's depthUpdate, Kraken's book update)."""
    if not isinstance(message, dict):
        return False
    return message.get("e") == "depthUpdate" or (
        message.get("channel") == "book" and message.get("type") == "update"
    )


def follow(roots: dict[str, str], ready: Any, done: Any, results: Any) -> None:
    """Client process: subscribe to each venue's book under its root, set `ready`, parse frames
    until `done` is set, then put {venue: Counted} on `results`."""
    results.put(asyncio.run(_follow(roots, ready, done)))


async def _follow(roots: dict[str, str], ready: Any, done: Any) -> dict[str, Counted]:
    async with aiohttp.ClientSession() as session:
        sockets = {}
        for venue, root in roots.items():
            path, subscription = SUBSCRIPTIONS[venue]
            sockets[venue] = await session.ws_connect(root + path, autoping=True)
            await sockets[venue].send_str(json.dumps(subscription))
        ready.set()
        counted = await asyncio.gather(*(_read(ws, done) for ws in sockets.values()))
        for ws in sockets.values():
            await ws.close()
    return dict(zip(sockets, counted, strict=True))


async def _read(ws: aiohttp.ClientWebSocketResponse, done: Any) -> Counted:
    count = first = last = 0
    while not done.is_set():
        try:
            frame = await ws.receive(timeout=0.2)
        except TimeoutError:
            continue
        if frame.type is not aiohttp.WSMsgType.TEXT:
            break
        if is_book_update(json.loads(frame.data)):
            last = time.monotonic_ns()
            first = first or last
            count += 1
    return count, first, last
