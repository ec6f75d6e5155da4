"""Risk predicates: each answers one question about a quote, a venue or a sized trade, with no side
effects. Time and state are passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from trading.core.numbers import plain
from trading.core.policy import Placed, Role
from trading.core.types import ZERO, Quote, Side, SizedTrade, VenueState, split_symbol


def is_stale(quote: Quote, max_age_ms: int, now_ms: int) -> bool:
    """True when the book is older than `max_age_ms` at `now_ms` (or stamped in the future)."""
    age = quote.age_ms(now_ms)
    return age > max_age_ms or age < -max_age_ms


def is_crossed(quote: Quote) -> bool:
    return quote.best_bid >= quote.best_ask


def is_down(venue: VenueState) -> bool:
    return not venue.up


def quote_age_limit(venue: VenueState, strategy_limit_ms: int) -> int:
    """The stricter of the venue's own quote-age limit and the strategy's."""
    return min(venue.max_quote_age_ms, strategy_limit_ms)


# --- trading limits: the questions asked of a sized trade before any order is sent -----------------


@dataclass(frozen=True, slots=True)
class Limits:
    """The risk limits in force. None means no limit; money is in the quote currency."""

    max_trade_notional: Decimal | None
    max_open_exposure: Decimal | None
    daily_loss_limit: Decimal
    pair_cooldown_ms: int
    paused_venues: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RiskState:
    """What the limits are checked against: the unhedged base amount open per (venue, asset), and
    when the venue pair last traded (None: never)."""

    exposure: Mapping[tuple[str, str], Decimal]
    last_pair_trade_ms: int | None


def trade_notional(sized: SizedTrade) -> Decimal:
    """What the trade puts at stake: the larger of its two legs' notionals at their guard prices."""
    return max(leg.amount * leg.worst_price for leg in (sized.buy, sized.sell))


def added_exposure(sized: SizedTrade) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """The base amount each venue is left holding (long on the buy venue, short on the sell venue)
    if the other leg fails, with the guard price that values it: {(venue, base): (amount, price)}."""
    base, _ = split_symbol(sized.symbol)
    return {(leg.venue, base): (leg.amount, leg.worst_price) for leg in (sized.buy, sized.sell)}


def exposure(orders: Iterable[Placed]) -> dict[str, Decimal]:
    """The base one opportunity's orders leave, or could still leave, one-sided, by venue: long on
    its buy leg's venue what was bought (or may still be) beyond what was sold, short on its sell
    leg's venue the other way round. A filled leg whose partner is still to fill counts in full;
    legs that match, hedged or not, count nothing. Venues with nothing at stake are omitted."""
    placed = list(orders)
    leg_venues = {Side(order.role.value): order.venue for order in placed if order.role is not Role.HEDGE}
    at_stake: dict[str, Decimal] = {}
    for side, venue in leg_venues.items():
        could = sum((o.filled if o.finished else o.amount for o in placed if o.side is side), ZERO)
        matched = sum((o.filled for o in placed if o.side is not side), ZERO)
        if could > matched:
            at_stake[venue] = at_stake.get(venue, ZERO) + could - matched
    return at_stake


def in_cooldown(last_trade_ms: int | None, now_ms: int, cooldown_ms: int) -> bool:
    """True while `now_ms` is within `cooldown_ms` after the pair's last trade; never without a
    cooldown."""
    return cooldown_ms > 0 and last_trade_ms is not None and now_ms - last_trade_ms < cooldown_ms


def past_daily_loss(realized_pnls: Iterable[Decimal], limit: Decimal) -> bool:
    """True when today's realized PnL has lost more than `limit`."""
    return sum(realized_pnls, Decimal(0)) < -limit


def trade_violation(sized: SizedTrade, limits: Limits, state: RiskState, now_ms: int) -> str | None:
    """The first limit the trade breaks, as a rejection reason starting "risk: ", or None."""
    pair = f"{sized.buy.venue}->{sized.sell.venue}"
    paused = sorted({sized.buy.venue, sized.sell.venue} & limits.paused_venues)
    if paused:
        return f"risk: venue_paused {', '.join(paused)}"
    notional = trade_notional(sized)
    if is_over(notional, limits.max_trade_notional):
        cap = plain(limits.max_trade_notional, missing="none")
        return f"risk: max_notional {plain(notional)} over {cap}"
    for (venue, asset), (added, price) in added_exposure(sized).items():
        total = (state.exposure.get((venue, asset), Decimal(0)) + added) * price
        if is_over(total, limits.max_open_exposure):
            cap = plain(limits.max_open_exposure, missing="none")
            return f"risk: max_exposure {venue} {asset} {plain(total)} over {cap}"
    if in_cooldown(state.last_pair_trade_ms, now_ms, limits.pair_cooldown_ms):
        waited = now_ms - (state.last_pair_trade_ms or 0)
        return f"risk: cooldown {pair} traded {waited} ms ago, cooldown {limits.pair_cooldown_ms} ms"
    return None


def is_over(amount: Decimal, limit: Decimal | None) -> bool:
    return limit is not None and amount > limit


def max_drawdown(pnls: Iterable[Decimal]) -> Decimal:
    """Largest fall of the running PnL total from its previous peak (the start counts as 0)."""
    total = peak = worst = Decimal(0)
    for pnl in pnls:
        total += pnl
        peak = max(peak, total)
        worst = max(worst, peak - total)
    return worst
