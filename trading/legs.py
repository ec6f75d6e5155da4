"""Legs on a venue: send (or find again), confirm by polling until a deadline, cancel what is
still open then. Paper legs take the same steps; the paper gateway answers at once.

Only venue calls live here; what to send and what it means for the record is execution's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from django.conf import settings

from trading.core.types import MarketRules
from trading.models import Venue
from trading.venues.base import Gateway, OrderNotFound, OrderRequest, OrderResult, TemporaryVenueError
from trading.venues.registry import order_gateway

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.2


async def on_venue(venue: Venue, mode: str, action: Callable[[Gateway], Awaitable[T]]) -> T:
    """`action` on a fresh order gateway of `venue` in `mode` ("paper" or "live"), closed
    afterwards."""
    gateway = order_gateway(venue, mode)
    try:
        return await action(gateway)
    finally:
        await gateway.close()


@dataclass(frozen=True)
class VenueFacts:
    """What a live venue says before a trade: the account's free balances, the market's rules
    (minimums, precision) and the taker fee of the account's fee tier."""

    balances: dict[str, Decimal]
    rules: MarketRules
    taker_fee: Decimal


async def venue_facts(venue: Venue, symbol: str) -> VenueFacts:
    """`venue`'s facts for trading `symbol` now."""

    async def read(gateway: Gateway) -> VenueFacts:
        rules = await gateway.market_rules(symbol)  # type: ignore[attr-defined]
        taker_fee = await gateway.taker_fee(symbol)  # type: ignore[attr-defined]
        return VenueFacts(await gateway.fetch_balance(), rules, taker_fee)

    return await on_venue(venue, "live", read)


async def confirmed(gateway: Gateway, request: OrderRequest, *, look_first: bool) -> OrderResult:
    """The final state of the order under request.client_order_id. With `look_first` (it may have
    been sent before a crash) the venue is asked first and the order is sent only when the venue
    has none, so it is never sent twice. An open order is polled until LEG_FILL_DEADLINE_MS, then
    cancelled. Raises OrderNotFound when the order never arrived, OrderRejected or VenueError when
    the venue refused it."""
    result = await _existing(gateway, request) if look_first else None
    if result is None:
        result = await _send(gateway, request)
    return await _until_finished(gateway, request, result)


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


async def _until_finished(gateway: Gateway, request: OrderRequest, result: OrderResult | None) -> OrderResult:
    deadline = time.monotonic() + settings.LEG_FILL_DEADLINE_MS / 1000
    while result is None or result.status == "open":
        if time.monotonic() >= deadline:
            log.warning(
                "%s: %s not finished by the deadline: cancelling", gateway.name, request.client_order_id
            )
            return await gateway.cancel_order(request.client_order_id, request.symbol)
        await asyncio.sleep(POLL_S)
        result = await _poll(gateway, request, result)
    return result


async def _poll(gateway: Gateway, request: OrderRequest, last: OrderResult | None) -> OrderResult | None:
    try:
        return await gateway.fetch_order(request.client_order_id, request.symbol)
    except (OrderNotFound, TemporaryVenueError) as exc:
        log.info("%s: %s not confirmed yet: %s", gateway.name, request.client_order_id, exc)
        return last
