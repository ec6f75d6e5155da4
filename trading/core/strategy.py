"""Opportunity finding: every ordered venue pair of a symbol whose books cross becomes a Decision."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal

from trading.core import risk
from trading.core.fills import fees_paid, fill, filled_amount, notional
from trading.core.types import (
    BPS,
    ZERO,
    Decision,
    Leg,
    Opportunity,
    Quote,
    Side,
    StrategyParams,
    VenueState,
    split_symbol,
)


class Reason:
    """Stable names for why a decision went the way it did (counted, filtered on in admin)."""

    ACCEPTED = "accepted"
    VENUE_DOWN = "venue_down"
    STALE_QUOTE = "stale_quote"
    CROSSED_BOOK = "crossed_book"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BELOW_MIN_SIZE = "below_min_size"
    BELOW_MIN_PROFIT = "below_min_profit"
    OVER_LIMIT = "over_limit"


def quantize_amount(amount: Decimal, *steps: Decimal) -> Decimal:
    """Round `amount` down to a multiple of every step (steps are powers of ten in practice)."""
    for step in steps:
        if step > ZERO:
            amount = (amount / step).to_integral_value(rounding=ROUND_DOWN) * step
    return amount


def profitable_depth(
    buy_book: Quote,
    sell_book: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    cap: Decimal,
) -> Decimal:
    """How much can be bought on `buy_book` and sold on `sell_book` while each unit still earns.

    Walks asks and bids together while the marginal ask, fee included, is below the marginal bid
    net of fee, stopping at `cap` (in base units).
    """
    buy_cost = Decimal(1) + buy_venue.fees.taker
    sell_keep = Decimal(1) - sell_venue.fees.taker
    asks, bids = buy_book.asks, sell_book.bids
    i = j = 0
    ask_left, bid_left = asks[0][1], bids[0][1]
    total = ZERO
    while total < cap and asks[i][0] * buy_cost < bids[j][0] * sell_keep:
        step = min(ask_left, bid_left, cap - total)
        total += step
        ask_left -= step
        bid_left -= step
        if ask_left <= ZERO:
            i += 1
            if i == len(asks):
                break
            ask_left = asks[i][1]
        if bid_left <= ZERO:
            j += 1
            if j == len(bids):
                break
            bid_left = bids[j][1]
    return total


def balance_cap(
    buy_book: Quote, buy_venue: VenueState, sell_venue: VenueState, depth: Decimal
) -> Decimal:
    """The most base the free balances allow: base to sell, quote (with fee) to buy `depth`.

    Prices the purchase at the worst ask that `depth` reaches, so the cap never overspends.
    """
    base, quote = split_symbol(buy_book.symbol)
    reached = fill(buy_book.asks, Side.BUY, depth, buy_venue.fees.taker)
    worst_ask = reached[-1].price if reached else buy_book.best_ask
    affordable = buy_venue.free(quote) / (worst_ask * (Decimal(1) + buy_venue.fees.taker))
    return min(sell_venue.free(base), affordable)


def _reject(buy: Quote, sell: Quote, reason: str) -> Decision:
    return Decision(buy.symbol, buy.venue, sell.venue, accepted=False, reason=reason)


def _risk_reason(
    buy: Quote, sell: Quote, buy_venue: VenueState, sell_venue: VenueState,
    params: StrategyParams, now_ms: int,
) -> str | None:
    if risk.is_down(buy_venue) or risk.is_down(sell_venue):
        return Reason.VENUE_DOWN
    for quote, venue in ((buy, buy_venue), (sell, sell_venue)):
        if risk.is_stale(quote, risk.quote_age_limit(venue, params.max_quote_age_ms), now_ms):
            return Reason.STALE_QUOTE
        if risk.is_crossed(quote):
            return Reason.CROSSED_BOOK
    return None


def _leg(venue: VenueState, side: Side, quote: Quote, amount: Decimal) -> Leg:
    levels = quote.asks if side is Side.BUY else quote.bids
    fills = fill(levels, side, amount, venue.fees.taker)
    filled = filled_amount(fills)
    return Leg(
        venue=venue.name,
        side=side,
        amount=filled,
        price=notional(fills) / filled,
        worst_price=fills[-1].price,
        fee=fees_paid(fills),
    )


def _size(
    buy: Quote, sell: Quote, buy_venue: VenueState, sell_venue: VenueState, params: StrategyParams
) -> tuple[Decimal, str | None]:
    """The amount to trade, or zero with the reason no amount can be traded."""
    depth = profitable_depth(buy, sell, buy_venue, sell_venue, params.trade_size)
    if depth <= ZERO:
        return ZERO, Reason.BELOW_MIN_PROFIT  # the books cross, but fees eat the gap
    funded = min(depth, balance_cap(buy, buy_venue, sell_venue, depth))
    for venue in (buy_venue, sell_venue):
        if venue.max_notional is not None:
            funded = min(funded, venue.max_notional / buy.best_ask)
    steps = (buy_venue.rules.amount_step, sell_venue.rules.amount_step)
    min_amount = max(buy_venue.rules.min_amount, sell_venue.rules.min_amount)
    amount = quantize_amount(funded, *steps)
    if amount > ZERO and amount >= min_amount:
        return amount, None
    market_allows = quantize_amount(depth, *steps)
    if funded < depth and market_allows > ZERO and market_allows >= min_amount:
        return ZERO, Reason.INSUFFICIENT_BALANCE
    return ZERO, Reason.BELOW_MIN_SIZE


def evaluate_pair(
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    params: StrategyParams,
    now_ms: int,
) -> Decision | None:
    """Decide on buying on `buy` and selling on `sell`; None when their books do not cross.

    The decision is exact (Decimal) and sized by profitable depth, balances, per-venue notional
    limits and venue precision. A crossing that cannot be traded is a rejected Decision whose
    reason is one of `Reason`.
    """
    if buy.best_ask >= sell.best_bid:
        return None
    blocked = _risk_reason(buy, sell, buy_venue, sell_venue, params, now_ms)
    if blocked:
        return _reject(buy, sell, blocked)
    amount, why_not = _size(buy, sell, buy_venue, sell_venue, params)
    if why_not:
        return _reject(buy, sell, why_not)
    buy_leg = _leg(buy_venue, Side.BUY, buy, amount)
    sell_leg = _leg(sell_venue, Side.SELL, sell, amount)
    cost = buy_leg.price * amount
    gross = sell_leg.price * amount - cost
    net = gross - buy_leg.fee - sell_leg.fee
    min_cost = max(buy_venue.rules.min_cost, sell_venue.rules.min_cost)
    if cost < min_cost:
        return _reject(buy, sell, Reason.BELOW_MIN_SIZE)
    if risk.is_over_limit(buy_venue, cost) or risk.is_over_limit(sell_venue, sell_leg.price * amount):
        return _reject(buy, sell, Reason.OVER_LIMIT)
    opportunity = Opportunity(buy.symbol, buy_leg, sell_leg, gross, net, net / cost * BPS)
    if net <= ZERO or opportunity.net_bps < params.min_profit_bps:
        return Decision(buy.symbol, buy.venue, sell.venue, False, Reason.BELOW_MIN_PROFIT, opportunity)
    return Decision(buy.symbol, buy.venue, sell.venue, True, Reason.ACCEPTED, opportunity)


def find_decisions(
    books: Mapping[str, Quote],
    venues: Mapping[str, VenueState],
    params: StrategyParams,
    now_ms: int,
) -> list[Decision]:
    """Evaluate every ordered pair of the venues in `books` (one symbol's latest book per venue).

    Books from venues missing in `venues` are ignored. Returns one Decision per crossing pair.
    """
    decisions: list[Decision] = []
    for buy_name, buy in books.items():
        buy_venue = venues.get(buy_name)
        if buy_venue is None:
            continue
        for sell_name, sell in books.items():
            if sell_name == buy_name or buy.best_ask >= sell.best_bid:
                continue
            sell_venue = venues.get(sell_name)
            if sell_venue is None:
                continue
            decision = evaluate_pair(buy, sell, buy_venue, sell_venue, params, now_ms)
            if decision is not None:
                decisions.append(decision)
    return decisions
