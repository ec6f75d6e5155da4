"""Risk predicates: each answers one question about a quote or a venue, with no side effects."""

from __future__ import annotations

from decimal import Decimal

from trading.core.types import Quote, VenueState


def is_stale(quote: Quote, max_age_ms: int, now_ms: int) -> bool:
    """True when the book is older than `max_age_ms` at `now_ms` (or stamped in the future)."""
    age = quote.age_ms(now_ms)
    return age > max_age_ms or age < -max_age_ms


def is_crossed(quote: Quote) -> bool:
    return quote.best_bid >= quote.best_ask


def is_down(venue: VenueState) -> bool:
    return not venue.up


def is_over_limit(venue: VenueState, notional: Decimal) -> bool:
    return venue.max_notional is not None and notional > venue.max_notional


def quote_age_limit(venue: VenueState, strategy_limit_ms: int) -> int:
    """The stricter of the venue's own quote-age limit and the strategy's."""
    return min(venue.max_quote_age_ms, strategy_limit_ms)
