"""Which gateway reads a venue's books: one constructor per Venue.Kind, no branches on names."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from trading.models import Venue
from trading.venues.base import Gateway, VenueError
from trading.venues.ccxt_gateway import CcxtGateway
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
