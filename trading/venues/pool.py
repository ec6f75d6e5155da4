"""Gateways kept open for the life of a process, on one event loop of their own.

Opening a ccxt client costs tens of milliseconds (its class builds its whole API description, then
it connects); a trade cannot wait for that between a decision and its orders. Each process keeps
one asyncio loop on a thread of its own and the gateways it opened there, and runs venue calls on
it from synchronous code (a Celery task, a management command). A forked child (a prefork worker)
starts its own loop and gateways: a parent's never cross a fork.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

from trading.venues.base import Gateway

log = logging.getLogger(__name__)
T = TypeVar("T")


class GatewayPool:
    """Open gateways by key, and the loop they live on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateways: dict[Hashable, Gateway] = {}

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._gateways = {}
                self._loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._loop.run_forever, name="venue-calls", daemon=True)
                thread.start()
            return self._loop

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine `call()` on the pool's loop and wait for it. If the waiting thread is
        interrupted (a task's time limit), the call is cancelled too."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(_awaited(call), self._ensure_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def gateway(self, key: Hashable, build: Callable[[], Gateway]) -> Gateway:
        """The open gateway under `key`, built by `build` the first time. Call on the loop."""
        gateway = self._gateways.get(key)
        if gateway is None:
            gateway = self._gateways[key] = build()
        return gateway

    def forget(self, key: Hashable) -> None:
        """Drop (and close, in the background) the gateway under `key`: the next call builds a
        fresh one. Call on the loop."""
        gateway = self._gateways.pop(key, None)
        if gateway is not None:
            asyncio.get_running_loop().create_task(_close_quietly(gateway))

    def close_all(self) -> None:
        """Close every gateway (at process exit)."""
        if self._loop is None or self._pid != os.getpid():
            return
        gateways, self._gateways = list(self._gateways.values()), {}

        async def close() -> None:
            await asyncio.gather(*(_close_quietly(gateway) for gateway in gateways))

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


async def _close_quietly(gateway: Gateway) -> None:
    try:
        await gateway.close()
    except Exception:  # closing is best effort: the process is done with it
        log.warning("closing gateway %s failed", gateway.name, exc_info=True)


POOL = GatewayPool()
