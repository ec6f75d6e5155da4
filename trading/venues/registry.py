"""Which gateway serves a venue: one constructor per Venue.Kind for books, and per trading mode
for orders; no branches on names."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from trading import pubsub
from trading.core.types import Quote
from trading.core_inputs import market_rules
from trading.credentials import credentials
from trading.models import Venue
from trading.venues.base import Gateway, VenueError
from trading.venues.ccxt_gateway import ORDER_DIALECTS, CcxtGateway
from trading.venues.pacing import SharedPacer, bucket_key
from trading.venues.paper import PaperGateway
from trading.venues.simulated import SimulatedGateway


def _ccxt(venue: Venue) -> Gateway:
    return CcxtGateway(venue.name, venue.ccxt_id, api_url=venue.api_url)


def _simulated(venue: Venue) -> Gateway:
    return SimulatedGateway(venue.name, seed=settings.SIMULATION_SEED)


BOOK_GATEWAYS: dict[str, Callable[[Venue], Gateway]] = {
    Venue.Kind.CCXT: _ccxt,
    Venue.Kind.SIMULATED: _simulated,
}


def book_gateway(venue: Venue) -> Gateway:
    """A new gateway for `venue`'s books; the caller closes it. Raises VenueError for a kind
    without one."""
    try:
        build = BOOK_GATEWAYS[venue.kind]
    except KeyError:
        raise VenueError(f"{venue.name}: no gateway for venue kind {venue.kind!r}") from None
    return build(venue)


def paper_gateway(venue: Venue) -> Gateway:
    """Fills against what is left of the venue's latest published book when the order is placed."""
    client = pubsub.connect()

    def book_for(symbol: str) -> Quote:
        book = pubsub.latest_book(client, symbol, venue.name)
        if book is None:
            raise VenueError(f"{venue.name}: no current {symbol} book to fill against")
        return book

    return PaperGateway(venue.name, venue.taker_fee, book_for, client, market_rules(venue))


def live_gateway(venue: Venue) -> Gateway:
    """The venue's real order API through ccxt, signing with its keys from the environment, its
    calls paced with every other process using those keys. Raises VenueError for a venue without
    keys or without an order API."""
    keys = credentials(venue.name)
    if venue.kind != Venue.Kind.CCXT or keys is None:
        raise VenueError(f"{venue.name}: no live order gateway (a ccxt venue with keys is needed)")
    paced = settings.LIVE_RATE_LIMITED
    key = bucket_key(pubsub.names().prefix, venue.ccxt_id, keys[0])
    return CcxtGateway(
        venue.name,
        venue.ccxt_id,
        api_url=venue.api_url,
        credentials=keys,
        rate_limited=paced,
        pacer=SharedPacer(settings.REDIS_URL, key, settings.LIVE_RATE_BURST) if paced else None,
    )


ORDER_GATEWAYS: dict[str, Callable[[Venue], Gateway]] = {"paper": paper_gateway, "live": live_gateway}


def order_gateway(venue: Venue, mode: str) -> Gateway:
    """A new gateway that places `venue`'s orders in `mode` ("paper" or "live"); the caller
    closes it."""
    return ORDER_GATEWAYS[mode](venue)


def tradeable(venue: Venue, mode: str) -> bool:
    """Whether `venue` can be a leg in `mode`: on paper every venue can; live, only a ccxt venue
    with an order dialect and keys in the environment. The others are quote-only: their books
    are a price reference, never a leg."""
    if mode != "live":
        return True
    return (
        venue.kind == Venue.Kind.CCXT
        and venue.ccxt_id in ORDER_DIALECTS
        and credentials(venue.name) is not None
    )
