"""Opportunity finding: every ordered venue pair of a symbol whose books cross becomes a Decision."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from decimal import ROUND_DOWN, Context, Decimal
from functools import lru_cache
from itertools import permutations

from trading.core import risk
from trading.core.fills import average, fill, guard_price, reached, tick_of, totals
from trading.core.types import (
    BPS,
    ZERO,
    Decision,
    Fill,
    Leg,
    Level,
    MarketRules,
    Quote,
    Side,
    SizedTrade,
    StrategyParams,
    VenueState,
    split_symbol,
)

# Caps divide money by prices; rounding those quotients down keeps every cap on the safe side.
_DOWN = Context(rounding=ROUND_DOWN)


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
    STALE_PAIR = "stale_pair"  # each book is fresh, but they are too far apart in time


def quantize_amount(amount: Decimal, *steps: Decimal) -> Decimal:
    """Round a non-negative `amount` down to the largest multiple of every positive step.

    Steps that are not positive mean "no precision rule" and are ignored; with none left,
    `amount` comes back unchanged. The result is exact (no division rounding).
    """
    step = _common_step(steps)
    return amount if step is None else amount // step * step


def _common_step(steps: Sequence[Decimal]) -> Decimal | None:
    """The least common multiple of the positive steps (0.001 and 0.0005 give 0.001)."""
    # Cached by each step as written, not its value: 0.00001 and 0.000010 are equal, but amounts
    # rounded onto them print differently (and a Decimal's text gives back that very Decimal).
    return _lcm_step(tuple(map(str, steps)))


@lru_cache(maxsize=256)
def _lcm_step(steps: tuple[str, ...]) -> Decimal | None:
    positive = [step for step in map(Decimal, steps) if step > ZERO]
    if not positive:
        return None
    exponent = min(int(step.as_tuple().exponent) for step in positive)
    units = [int(step.scaleb(-exponent)) for step in positive]
    return Decimal(math.lcm(*units)).scaleb(exponent)


def _edge(ask: Decimal, bid: Decimal, buy_venue: VenueState, sell_venue: VenueState) -> Decimal:
    """What one unit bought at `ask` and sold at `bid` nets after both taker fees."""
    return bid * (1 - sell_venue.fees.taker) - ask * (1 + buy_venue.fees.taker)


def _clears(
    ask: Decimal, bid: Decimal, buy_venue: VenueState, sell_venue: VenueState, min_bps: Decimal
) -> bool:
    """Whether a unit bought at `ask` and sold at `bid` nets more than zero and at least
    `min_bps` of what it cost."""
    edge = _edge(ask, bid, buy_venue, sell_venue)
    return edge > ZERO and edge * BPS >= min_bps * ask


def _guards(
    ask: Decimal, bid: Decimal, buy_venue: VenueState, sell_venue: VenueState, slippage_bps: Decimal
) -> tuple[Decimal, Decimal]:
    """The limit prices of a purchase reaching `ask` and a sale reaching `bid`."""
    return (
        _guard(ask, Side.BUY, slippage_bps, buy_venue.rules),
        _guard(bid, Side.SELL, slippage_bps, sell_venue.rules),
    )


def _matched_slices(
    asks: Sequence[Level], bids: Sequence[Level]
) -> Iterator[tuple[Decimal, Decimal, Decimal]]:
    """Walk asks and bids together, best first: (ask, bid, amount) for each stretch in which
    neither level changes."""
    i = j = 0
    ask_used = bid_used = ZERO
    while i < len(asks) and j < len(bids):
        (ask, ask_size), (bid, bid_size) = asks[i], bids[j]
        amount = min(ask_size - ask_used, bid_size - bid_used)
        yield ask, bid, amount
        ask_used += amount
        bid_used += amount
        if ask_used >= ask_size:
            i, ask_used = i + 1, ZERO
        if bid_used >= bid_size:
            j, bid_used = j + 1, ZERO


def guarded_depth(
    buy_book: Quote,
    sell_book: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    cap: Decimal,
    min_bps: Decimal = ZERO,
    slippage_bps: Decimal = ZERO,
) -> Decimal:
    """How much to buy on `buy_book` and sell on `sell_book`: the most, up to `cap` (base units),
    that still nets more than zero after both taker fees, and at least `min_bps` of its cost, if
    both legs fill at their limit prices (the last level each reaches, `slippage_bps` past it).

    The books are walked best first and a deeper level only moves a limit against us, so every
    smaller amount clears the bar too.
    """
    total = ZERO
    for ask, bid, amount in _matched_slices(buy_book.asks, sell_book.bids):
        limits = _guards(ask, bid, buy_venue, sell_venue, slippage_bps)
        if total >= cap or not _clears(*limits, buy_venue, sell_venue, min_bps):
            break
        total += min(amount, cap - total)
    return total


def guarded_amount(asks: Sequence[Level], budget: Decimal) -> Decimal:
    """The most base to buy from `asks` (best first) whose amount times the worst ask it reaches
    stays within `budget`. A buy is sent with that worst ask as its limit, so this bounds what
    it can cost however it fills. Zero for a budget that is not positive."""
    total = ZERO
    for price, available in asks:
        affordable = _DOWN.divide(budget, price)
        if affordable < total + available:
            return max(total, affordable)
        total += available
    return total


def _slipped(slippage_bps: Decimal) -> Decimal:
    """How much a buy's guard price may exceed the worst ask it reaches, as a factor."""
    return 1 + slippage_bps / BPS


def balance_cap(
    buy_book: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    depth: Decimal,
    slippage_bps: Decimal = ZERO,
) -> Decimal:
    """The most base, at most `depth`, that free balances allow: base to sell on `sell_venue`,
    and quote on `buy_venue` for the purchase at its guard price (`slippage_bps` past the worst
    ask it reaches) plus the taker fee."""
    base, quote = split_symbol(buy_book.symbol)
    spendable = _DOWN.divide(buy_venue.free(quote), (1 + buy_venue.fees.taker) * _slipped(slippage_bps))
    return min(depth, sell_venue.free(base), guarded_amount(buy_book.asks, spendable))


def limit_cap(
    buy_book: Quote,
    sell_book: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    depth: Decimal,
    slippage_bps: Decimal = ZERO,
) -> Decimal:
    """The most base, at most `depth`, within both venues' notional limits: the purchase priced
    at its guard price, the sale at the best bid (which no sale's average exceeds)."""
    cap = depth
    if buy_venue.max_notional is not None:
        budget = _DOWN.divide(buy_venue.max_notional, _slipped(slippage_bps))
        cap = min(cap, guarded_amount(buy_book.asks, budget))
    if sell_venue.max_notional is not None:
        cap = min(cap, max(ZERO, _DOWN.divide(sell_venue.max_notional, sell_book.best_bid)))
    return cap


def _reject(buy: Quote, sell: Quote, reason: str) -> Decision:
    return Decision(buy.symbol, buy.venue, sell.venue, accepted=False, reason=reason)


def _risk_reason(
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    params: StrategyParams,
    now_ms: int,
) -> str | None:
    if risk.is_down(buy_venue) or risk.is_down(sell_venue):
        return Reason.VENUE_DOWN
    for quote, venue in ((buy, buy_venue), (sell, sell_venue)):
        if risk.is_stale(quote, risk.quote_age_limit(venue, params.max_quote_age_ms), now_ms):
            return Reason.STALE_QUOTE
        if risk.is_crossed(quote):
            return Reason.CROSSED_BOOK
    if abs(buy.timestamp - sell.timestamp) > params.max_book_skew_ms:
        return Reason.STALE_PAIR
    return None


def _guard(last: Decimal, side: Side, slippage_bps: Decimal, rules: MarketRules) -> Decimal:
    """The limit price of a leg whose amount reaches the level at `last`: `slippage_bps` past it,
    on the venue's price tick (or the coarsest tick `last` can be on, when that is unknown)."""
    if not slippage_bps:
        return last
    return guard_price(last, side, slippage_bps, rules.price_tick or tick_of(last))


def _meets_minimums(
    amount: Decimal,
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    slippage_bps: Decimal,
) -> bool:
    """Whether both venues take orders of `amount`: their minimum amount, and their minimum cost
    at the guard price each order is sent with."""
    if amount <= ZERO:
        return False
    orders = ((buy.asks, Side.BUY, buy_venue), (sell.bids, Side.SELL, sell_venue))
    return all(
        amount >= venue.rules.min_amount
        and _guard(reached(levels, amount), side, slippage_bps, venue.rules) * amount >= venue.rules.min_cost
        for levels, side, venue in orders
    )


def _size(
    buy: Quote, sell: Quote, buy_venue: VenueState, sell_venue: VenueState, params: StrategyParams
) -> tuple[Decimal, str | None]:
    """The amount to trade, or zero with the reason none can be: the constraint that binds."""
    slippage = params.slippage_bps
    limits = _guards(buy.best_ask, sell.best_bid, buy_venue, sell_venue, slippage)
    if not _clears(*limits, buy_venue, sell_venue, params.min_profit_bps):
        return ZERO, Reason.BELOW_MIN_PROFIT  # the books cross, but fees, the bar or the guards eat the gap
    depth = guarded_depth(
        buy, sell, buy_venue, sell_venue, params.trade_size, params.min_profit_bps, slippage
    )
    steps = (buy_venue.rules.amount_step, sell_venue.rules.amount_step)
    deepest = quantize_amount(depth, *steps)
    if not _meets_minimums(deepest, buy, sell, buy_venue, sell_venue, slippage):
        return ZERO, Reason.BELOW_MIN_SIZE
    cap, reason = min(
        (balance_cap(buy, buy_venue, sell_venue, depth, slippage), Reason.INSUFFICIENT_BALANCE),
        (limit_cap(buy, sell, buy_venue, sell_venue, depth, slippage), Reason.OVER_LIMIT),
        key=lambda candidate: candidate[0],
    )
    amount = quantize_amount(cap, *steps)
    # Nothing caps the depth (the usual case): it was just checked.
    if amount == deepest or _meets_minimums(amount, buy, sell, buy_venue, sell_venue, slippage):
        return amount, None
    return ZERO, reason


def _leg(venue: VenueState, side: Side, fills: Sequence[Fill], slippage_bps: Decimal) -> tuple[Leg, Decimal]:
    """The leg `fills` make, and their notional."""
    amount, value, fee = totals(fills)
    leg = Leg(
        venue=venue.name,
        side=side,
        amount=amount,
        price=average(amount, value),
        worst_price=_guard(fills[-1].price, side, slippage_bps, venue.rules),
        fee=fee,
    )
    return leg, value


def _sized_trade(
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    amount: Decimal,
    slippage_bps: Decimal,
) -> SizedTrade:
    """Both legs of trading `amount`, each guarded `slippage_bps` past the book; profit comes
    from the books' exact notionals, never rounded averages."""
    bought = fill(buy.asks, Side.BUY, amount, buy_venue.fees.taker)
    sold = fill(sell.bids, Side.SELL, amount, sell_venue.fees.taker)
    buy_leg, cost = _leg(buy_venue, Side.BUY, bought, slippage_bps)
    sell_leg, proceeds = _leg(sell_venue, Side.SELL, sold, slippage_bps)
    gross = proceeds - cost
    net = gross - buy_leg.fee - sell_leg.fee
    worst = amount * _edge(buy_leg.worst_price, sell_leg.worst_price, buy_venue, sell_venue)
    return SizedTrade(buy.symbol, buy_leg, sell_leg, gross, net, net / cost * BPS, worst)


def clears_at_limits(sized: SizedTrade, min_bps: Decimal) -> bool:
    """Whether the trade nets more than zero, and at least `min_bps` of its cost, with both legs
    filled at their limit prices: the least it can make when both fill."""
    cost = sized.buy.amount * sized.buy.worst_price
    return sized.worst_net > ZERO and sized.worst_net * BPS >= min_bps * cost


def evaluate_pair(
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    params: StrategyParams,
    now_ms: int,
) -> Decision | None:
    """Decide on buying on `buy` and selling on `sell`; None when their books do not cross.

    The decision is exact (Decimal) and sized by the greatest depth that meets the profit bar with
    both legs at their limit prices (`guarded_depth`), then by balances and per-venue notional
    limits (both at the buy's guard price), then rounded down to both venues' amount steps. A
    crossing that cannot be traded is a rejected Decision whose reason is one of `Reason`: the
    first risk check that fails, else the constraint that leaves too little to trade.
    """
    if buy.best_ask >= sell.best_bid:
        return None
    blocked = _risk_reason(buy, sell, buy_venue, sell_venue, params, now_ms)
    if blocked:
        return _reject(buy, sell, blocked)
    amount, why_not = _size(buy, sell, buy_venue, sell_venue, params)
    if why_not:
        return _reject(buy, sell, why_not)
    sized = _sized_trade(buy, sell, buy_venue, sell_venue, amount, params.slippage_bps)
    # Sizing already keeps every unit above the bar at its limit; re-checking the final figures is
    # the guard that nothing unprofitable is accepted should rounding ever disagree.
    if not clears_at_limits(sized, params.min_profit_bps):
        return Decision(buy.symbol, buy.venue, sell.venue, False, Reason.BELOW_MIN_PROFIT, sized)
    return Decision(buy.symbol, buy.venue, sell.venue, True, Reason.ACCEPTED, sized)


def _pairs(books: Mapping[str, Quote], involving: frozenset[str] | None) -> list[tuple[Quote, Quote]]:
    """(buy, sell) book pairs worth a closer look, each once: the buy's ask is below the sell's
    bid. With `involving`, only pairs with one of those venues, taken in the books' order."""
    if involving is None:
        return [
            (buy, sell) for buy, sell in permutations(books.values(), 2) if buy.asks[0][0] < sell.bids[0][0]
        ]
    pairs: list[tuple[Quote, Quote]] = []
    taken: set[str] = set()  # changed venues whose pairs are in already
    for name, mine in books.items():
        if name not in involving:
            continue
        taken.add(name)
        ask, bid = mine.asks[0][0], mine.bids[0][0]
        for other_name, other in books.items():
            if other_name in taken:
                continue
            if ask < other.bids[0][0]:
                pairs.append((mine, other))
            if other.asks[0][0] < bid:
                pairs.append((other, mine))
    return pairs


def find_decisions(
    books: Mapping[str, Quote],
    venues: Mapping[str, VenueState],
    params: StrategyParams,
    now_ms: int,
    involving: frozenset[str] | None = None,
) -> list[Decision]:
    """Evaluate every ordered pair of the venues in `books` (one symbol's latest book per venue),
    or only the pairs that include a venue of `involving` (those whose books just changed).

    The scan compares best prices only; pairs whose books cross are decided exactly. Books from
    venues missing in `venues` are ignored. Returns one Decision per crossing pair.
    """
    decisions: list[Decision] = []
    for buy, sell in _pairs(books, involving):
        buy_venue, sell_venue = venues.get(buy.venue), venues.get(sell.venue)
        if buy_venue is None or sell_venue is None or not (buy_venue.tradeable and sell_venue.tradeable):
            continue
        decision = evaluate_pair(buy, sell, buy_venue, sell_venue, params, now_ms)
        if decision is not None:
            decisions.append(decision)
    return decisions
