"""Legs on a venue: send (or find again), confirm by polling until a deadline, cancel what is
still open then and read it until the venue says it is done. Paper legs take the same steps; the
paper gateway answers at once.

Only venue calls live here, on the process's gateway pool (trading.venues.pool); what to send and
what it means for the record is settlement's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from django.conf import settings

from trading.core.types import MarketRules
from trading.credentials import credentials
from trading.models import Venue
from trading.venues.base import Gateway, OrderNotFound, OrderRequest, OrderResult, TemporaryVenueError
from trading.venues.pool import POOL
from trading.venues.registry import order_gateway

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.05


def gateway_key(venue: Venue, mode: str) -> Hashable:
    """What a venue's order gateway is built from: a change to any of it builds a new one."""
    keys = credentials(venue.name) if mode == "live" else None
    rules = (venue.amount_step, venue.min_amount, venue.min_cost, venue.price_tick)
    client = (
        settings.REDIS_URL,
        settings.COLLECT_TIMEOUT_MS,
        settings.LIVE_RATE_LIMITED,
        settings.LIVE_RATE_BURST,
    )
    return (mode, venue.name, venue.kind, venue.ccxt_id, venue.api_url, venue.taker_fee, rules, keys, client)


async def on_venue(venue: Venue, mode: str, action: Callable[[Gateway], Awaitable[T]]) -> T:
    """`action` on `venue`'s order gateway in `mode` ("paper" or "live"), kept open for the next
    call. Call on the pool's loop (trading.legs.run)."""
    gateway = POOL.gateway(gateway_key(venue, mode), lambda: order_gateway(venue, mode))
    return await action(gateway)


def run(call: Callable[[], Awaitable[T]]) -> T:
    """Run venue calls from synchronous code, on the process's gateway pool."""
    return POOL.run(call)


def run_on(venue: Venue, mode: str, action: Callable[[Gateway], Awaitable[T]]) -> T:
    return run(lambda: on_venue(venue, mode, action))


async def confirmed(gateway: Gateway, request: OrderRequest, *, look_first: bool) -> OrderResult:
    """The order under request.client_order_id as the venue last reported it: final unless the
    venue still shows it open after a cancel (its result is then "open"). With `look_first` (it
    may have been sent before a crash) the venue is asked first and the order is sent only when
    the venue has none, so it is never sent twice. An open order is polled until
    LEG_FILL_DEADLINE_MS, then cancelled, then read until final for CANCEL_CONFIRM_MS. Raises
    OrderNotFound when the order never arrived, OrderRejected when the venue refused it, and
    VenueError when it is unknown what became of it."""
    result = await _existing(gateway, request) if look_first else None
    if result is None:
        result = await _send(gateway, request)
    result = await _polled(gateway, request, result, settings.LEG_FILL_DEADLINE_MS)
    if result is not None and result.finished:
        return result
    log.warning("%s: %s not finished by the deadline: cancelling", gateway.name, request.client_order_id)
    cancelled = await gateway.cancel_order(request.client_order_id, request.symbol)
    final = await _polled(gateway, request, cancelled, settings.CANCEL_CONFIRM_MS)
    if final is None:
        raise OrderNotFound(f"{gateway.name}: {request.client_order_id} never arrived")
    if not final.finished:
        log.warning("%s: cancel of %s still pending", gateway.name, request.client_order_id)
    return final


async def _existing(gateway: Gateway, request: OrderRequest) -> OrderResult | None:
    try:
        result = await gateway.fetch_order(request.client_order_id, request.symbol)
    except OrderNotFound:
        log.info("%s: %s was never placed: sending it now", gateway.name, request.client_order_id)
        return None
    log.info("%s: %s found already placed (%s)", gateway.name, request.client_order_id, result.status)
    return result


async def _send(gateway: Gateway, request: OrderRequest) -> OrderResult | None:
    """The venue's answer, or None when it is unknown whether the order arrived."""
    try:
        return await gateway.create_order(request)
    except TemporaryVenueError as exc:
        log.warning(
            "%s: sending %s failed for now (%s): looking it up", gateway.name, request.client_order_id, exc
        )
        return None


async def _polled(
    gateway: Gateway, request: OrderRequest, result: OrderResult | None, within_ms: int
) -> OrderResult | None:
    """Read the order until it is finished or `within_ms` have passed; the last known state."""
    deadline = time.monotonic() + within_ms / 1000
    while (result is None or not result.finished) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        result = await _poll(gateway, request, result)
    return result


async def _poll(gateway: Gateway, request: OrderRequest, last: OrderResult | None) -> OrderResult | None:
    try:
        return await gateway.fetch_order(request.client_order_id, request.symbol)
    except (OrderNotFound, TemporaryVenueError) as exc:
        log.info("%s: %s not confirmed yet: %s", gateway.name, request.client_order_id, exc)
        return last


@dataclass(frozen=True)
class VenueFacts:
    """What a live venue says of the account: its free balances, the taker fee of its fee tier on
    a symbol, and that market's rules (minimums, precision)."""

    balances: dict[str, Decimal]
    taker_fee: Decimal
    rules: MarketRules


async def venue_facts(gateway: Gateway, symbol: str) -> VenueFacts:
    """`gateway`'s venue's facts for trading `symbol` now, read at once."""
    balances, taker_fee, rules = await asyncio.gather(
        gateway.fetch_balance(), gateway.taker_fee(symbol), gateway.market_rules(symbol)
    )
    return VenueFacts(balances, taker_fee, rules)
