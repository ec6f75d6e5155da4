"""Opportunity finding: which crossings are traded, how big, for how much, and why the rest are not."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import find, given
from hypothesis import strategies as st

from tests.core.builders import (
    NOW,
    levels,
    nearby_books,
    params,
    quote,
    quotes,
    strategy_params,
    venue,
    venues,
)
from trading.core.fills import fees_paid, fill, notional
from trading.core.strategy import Reason, evaluate_pair, find_decisions, quantize_amount
from trading.core.types import (
    BPS,
    Decision,
    MarketRules,
    Quote,
    Side,
    SizedTrade,
    StrategyParams,
    VenueState,
)

# Buy on A, sell on B: A's asks are below B's bids for the first 1.3 BTC or so.
CHEAP = quote("A", bids=levels(("99.00", "1")), asks=levels(("100.00", "0.5"), ("100.50", "1")))
DEAR = quote("B", bids=levels(("101.50", "0.3"), ("101.00", "1")), asks=levels(("102.00", "1")))


def decide(
    buy: Quote = CHEAP,
    sell: Quote = DEAR,
    buy_venue: VenueState | None = None,
    sell_venue: VenueState | None = None,
    strategy: StrategyParams | None = None,
) -> Decision | None:
    return evaluate_pair(
        buy, sell, buy_venue or venue("A"), sell_venue or venue("B"), strategy or params(), NOW
    )


def accepted(decision: Decision | None) -> SizedTrade:
    assert decision is not None
    assert decision.accepted, decision.reason
    assert decision.reason == Reason.ACCEPTED
    assert decision.sized is not None
    return decision.sized


def test_a_known_gap_is_accepted_with_the_hand_computed_profit() -> None:
    # Every unit earns at least 10 bps net, so the whole trade size is taken:
    # buy 0.5 @ 100.00 + 0.5 @ 100.50 = 100.25, fee 0.10025;
    # sell 0.3 @ 101.50 + 0.7 @ 101.00 = 101.15, fee 0.10115.
    sized = accepted(decide(strategy=params(min_profit_bps="10", trade_size="1")))

    assert (sized.buy.venue, sized.buy.side, sized.buy.amount) == (
        "A",
        Side.BUY,
        Decimal(1),
    )
    assert (sized.sell.venue, sized.sell.side, sized.sell.amount) == (
        "B",
        Side.SELL,
        Decimal(1),
    )
    assert (sized.buy.price, sized.buy.worst_price) == (Decimal("100.25"), Decimal("100.50"))
    assert (sized.sell.price, sized.sell.worst_price) == (Decimal("101.15"), Decimal("101.00"))
    assert (sized.buy.fee, sized.sell.fee) == (Decimal("0.10025"), Decimal("0.10115"))
    assert sized.gross_profit == Decimal("0.90")
    assert sized.net_profit == Decimal("0.6986")
    assert sized.net_bps.quantize(Decimal("0.01")) == Decimal("69.69")


def test_a_slippage_allowance_moves_each_guard_past_the_book_but_not_the_expected_prices() -> None:
    # 10 bps past 100.50 is 100.6005, down onto the cent; 10 bps under 101.00 is 100.899, up.
    cents = MarketRules(price_tick=Decimal("0.01"))
    a, b = venue("A", rules=cents), venue("B", rules=cents)
    plain = accepted(decide(buy_venue=a, sell_venue=b, strategy=params(min_profit_bps="5", trade_size="1")))
    slipped = accepted(
        decide(
            buy_venue=a,
            sell_venue=b,
            strategy=params(min_profit_bps="5", trade_size="1", slippage_bps=Decimal(10)),
        )
    )

    assert (slipped.buy.worst_price, slipped.sell.worst_price) == (Decimal("100.60"), Decimal("100.90"))
    assert (slipped.buy.price, slipped.sell.price) == (plain.buy.price, plain.sell.price)
    assert slipped.net_profit == plain.net_profit


def test_a_slippage_allowance_is_paid_for_out_of_the_balance_before_it_is_needed() -> None:
    """Funds for 1 BTC at the 100.50 guard with fee, not at 10 bps more: the buy is sized down
    so that even a fill at its slipped limit is covered."""
    funds = Decimal("100.50") * Decimal("1.001")
    poorer = venue("A", balances={"USDT": funds, "BTC": Decimal(0)})
    strategy = params(trade_size="1", slippage_bps=Decimal(10))

    sized = accepted(decide(buy_venue=poorer, strategy=strategy))

    assert sized.buy.amount < 1
    assert sized.buy.amount * sized.buy.worst_price * Decimal("1.001") <= funds


def test_units_that_miss_the_bar_at_their_limits_are_left_out_though_the_average_would_meet_it() -> None:
    # The whole 1 BTC earns 69.69 bps as the books stand, but sent with limits of 100.50 and
    # 101.00 it could fill at those: 29.7 bps. Up to 0.5 BTC the limits are 100.00 and 101.00:
    # 101.00 * 0.999 - 100.00 * 1.001 = 0.799 a unit, 79.9 bps however the legs fill.
    sized = accepted(decide(strategy=params(min_profit_bps="50", trade_size="1")))

    assert sized.buy.amount == Decimal("0.5")
    assert (sized.buy.worst_price, sized.sell.worst_price) == (
        Decimal("100.00"),
        Decimal("101.00"),
    )
    assert sized.worst_net == Decimal("0.3995")


def test_an_accepted_trade_clears_the_bar_with_both_legs_at_their_limits() -> None:
    """With a 5 bps bar, 3 bps of slippage allowance and fees of 5 and 10 bps, a gap the books
    clear by 5.35 bps would net -0.65 bps with both legs at their limits (100.03 and 100.1737):
    it is not accepted."""
    buy_book = quote("A", bids=levels(("99.90", "1")), asks=levels(("100.00", "1")))
    sell_book = quote("B", bids=levels(("100.2037", "1")), asks=levels(("100.30", "1")))
    ticks = MarketRules(price_tick=Decimal("0.0001"))
    cheap, dear = venue("A", taker="0.0005", rules=ticks), venue("B", taker="0.001", rules=ticks)
    strategy = params(min_profit_bps="5", trade_size="1", slippage_bps=Decimal(3))

    decision = decide(buy=buy_book, sell=sell_book, buy_venue=cheap, sell_venue=dear, strategy=strategy)

    assert rejected(decision) == Reason.BELOW_MIN_PROFIT
    unguarded = decide(
        buy=buy_book, sell=sell_book, buy_venue=cheap, sell_venue=dear, strategy=params(min_profit_bps="5")
    )
    assert accepted(unguarded).net_bps.quantize(Decimal("0.01")) == Decimal("5.35")


def test_units_that_lose_after_fees_are_never_added_however_large_the_trade_size() -> None:
    deeper = replace(DEAR, bids=(*DEAR.bids, (Decimal("100.40"), Decimal(5))))

    sized = accepted(decide(sell=deeper, strategy=params(trade_size="5")))

    assert sized.buy.amount == Decimal("1.3")  # where B's bids fall below A's asks plus fees


def net_bps_of(amount: str) -> Decimal:
    """The net bps of trading `amount` A -> B, straight from the fill model."""
    bought = fill(CHEAP.asks, Side.BUY, Decimal(amount), Decimal("0.001"))
    sold = fill(DEAR.bids, Side.SELL, Decimal(amount), Decimal("0.001"))
    net = notional(sold) - notional(bought) - fees_paid(bought) - fees_paid(sold)
    return net / notional(bought) * BPS


def test_a_bar_the_full_size_misses_is_met_by_trading_less() -> None:
    # The full 1 BTC earns 69.69 bps, short of 100. The first 0.3 earn 129.85 bps at their limits
    # (100.00 and 101.50); one step more reaches B's 101.00 bid, and at a limit of 101.00 every
    # unit would earn 79.9 bps. By hand: sell 0.3 @ 101.50 = 30.45, fee 0.03045; buy 0.3 @ 100 = 30,
    # fee 0.03.
    sized = accepted(decide(strategy=params(min_profit_bps="100", trade_size="1")))

    assert sized.buy.amount == Decimal("0.3")
    assert sized.gross_profit == Decimal("0.45")
    assert sized.net_profit == sized.worst_net == Decimal("0.38955")
    assert net_bps_of("0.3") >= 100


def test_the_trade_size_caps_the_amount() -> None:
    sized = accepted(decide(strategy=params(trade_size="0.2")))

    assert sized.buy.amount == Decimal("0.2")
    # buy 0.2 @ 100.00 = 20.00, fee 0.02; sell 0.2 @ 101.50 = 20.30, fee 0.0203.
    assert sized.net_profit == Decimal("0.2597")


def test_books_that_do_not_cross_give_no_decision_even_when_a_venue_is_down() -> None:
    assert decide(sell=CHEAP, buy=DEAR) is None
    assert decide(sell=CHEAP, buy=DEAR, buy_venue=venue("B", up=False)) is None


def test_every_crossing_pair_among_several_venues_gets_one_decision() -> None:
    middle = quote("C", bids=levels(("100.50", "1")), asks=levels(("100.60", "1")))
    books = {"A": CHEAP, "B": DEAR, "C": middle}
    states = {name: venue(name) for name in books}

    decisions = find_decisions(books, states, params(), NOW)

    assert sorted(d.key[1:] for d in decisions) == [("A", "B"), ("A", "C"), ("C", "B")]
    assert all(d.accepted for d in decisions)


def test_books_of_venues_the_strategy_does_not_know_are_ignored() -> None:
    decisions = find_decisions({"A": CHEAP, "B": DEAR}, {"A": venue("A")}, params(), NOW)

    assert decisions == []


# --- rejections: each reason, reached by a small crafted case ---------------------------------------


def rejected(decision: Decision | None) -> str:
    assert decision is not None
    assert not decision.accepted
    return decision.reason


@pytest.mark.parametrize("down", ["buy", "sell"])
def test_a_venue_marked_down_is_not_traded(down: str) -> None:
    sick = {f"{down}_venue": venue("A" if down == "buy" else "B", up=False)}

    assert rejected(decide(**sick)) == Reason.VENUE_DOWN  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("received_ts", "venue_limit_ms"),
    [
        (NOW - 5_001, 5_000),  # older than both limits
        (NOW - 1_500, 1_000),  # fresh for the strategy, stale for the venue's own stricter limit
        (NOW + 5_001, 5_000),  # stamped in the future: a clock we cannot trust
    ],
)
def test_a_stale_quote_is_not_traded(received_ts: int, venue_limit_ms: int) -> None:
    old = replace(DEAR, received_ts=received_ts)

    decision = decide(sell=old, sell_venue=venue("B", max_quote_age_ms=venue_limit_ms))

    assert rejected(decision) == Reason.STALE_QUOTE


def test_a_quote_exactly_at_the_age_limit_is_still_fresh() -> None:
    old = NOW - 5_000
    strategy = params(max_quote_age_ms=5_000)
    accepted(
        decide(buy=replace(CHEAP, received_ts=old), sell=replace(DEAR, received_ts=old), strategy=strategy)
    )


def test_two_fresh_books_too_far_apart_in_time_are_not_traded() -> None:
    """Each book is younger than its limit, but one is 2 s older than the other: the gap may be
    nothing but the time between them."""
    older = replace(DEAR, received_ts=NOW - 2_000)

    assert rejected(decide(sell=older, strategy=params(max_book_skew_ms=1_500))) == Reason.STALE_PAIR
    accepted(decide(sell=older, strategy=params(max_book_skew_ms=2_000)))


def test_a_venue_that_only_quotes_is_never_a_leg() -> None:
    books = {"A": CHEAP, "B": DEAR}
    venues = {"A": venue("A"), "B": venue("B", tradeable=False)}

    assert find_decisions(books, venues, params(), NOW) == []


def test_a_crossed_book_is_not_traded() -> None:
    broken = quote("A", bids=levels(("100.10", "1")), asks=levels(("100.00", "1")))

    assert rejected(decide(buy=broken)) == Reason.CROSSED_BOOK


def test_a_gap_that_fees_eat_is_below_min_profit() -> None:
    # 100.15 * 0.999 = 100.04985 received for 100.00 * 1.001 = 100.10 spent.
    thin = quote("B", bids=levels(("100.15", "1")), asks=levels(("100.20", "1")))

    decision = decide(sell=thin)

    assert rejected(decision) == Reason.BELOW_MIN_PROFIT
    assert decision is not None
    assert decision.sized is None


def test_a_profit_under_the_minimum_bps_is_below_min_profit() -> None:
    # Without fees, 100.00 -> 100.05 is 5 bps.
    thin = quote("B", bids=levels(("100.05", "1")), asks=levels(("100.20", "1")))
    a, b = venue("A", taker="0"), venue("B", taker="0")

    accepted(decide(sell=thin, buy_venue=a, sell_venue=b, strategy=params(min_profit_bps="5")))
    too_high = decide(sell=thin, buy_venue=a, sell_venue=b, strategy=params(min_profit_bps="5.01"))
    assert rejected(too_high) == Reason.BELOW_MIN_PROFIT


def test_free_quote_balance_sizes_the_buy_down_at_its_guard_price_and_fee() -> None:
    # 10 USDT buys 10 / 1.001 / 100.00 = 0.0999000999... BTC, rounded down to the 0.00001 step.
    sized = accepted(decide(buy_venue=venue("A", balances={"USDT": Decimal(10)})))

    assert sized.buy.amount == Decimal("0.09990")


def test_free_base_balance_sizes_the_sale_down() -> None:
    sized = accepted(decide(sell_venue=venue("B", balances={"BTC": Decimal("0.25")})))

    assert sized.sell.amount == Decimal("0.25")


@pytest.mark.parametrize(
    "poor",
    [
        {
            "buy_venue": venue(
                "A",
                balances={"USDT": Decimal("0.5")},
                rules=replace(venue("A").rules, min_amount=Decimal("0.01")),
            )
        },
        {"sell_venue": venue("B", balances={"BTC": Decimal(0)})},
    ],
    ids=["no-quote-to-buy-with", "no-base-to-sell"],
)
def test_too_little_balance_to_trade_the_minimum_is_insufficient_balance(poor: dict[str, VenueState]) -> None:
    assert rejected(decide(**poor)) == Reason.INSUFFICIENT_BALANCE  # type: ignore[arg-type]


def test_an_amount_below_a_venue_minimum_is_below_min_size() -> None:
    rules = replace(venue("B").rules, min_amount=Decimal("2"))

    assert rejected(decide(sell_venue=venue("B", rules=rules))) == Reason.BELOW_MIN_SIZE


def test_an_order_cost_below_a_venue_minimum_is_below_min_size() -> None:
    # One BTC is at most 100.50 on A; A wants orders of at least 500 USDT.
    rules = replace(venue("A").rules, min_cost=Decimal("500"))

    assert rejected(decide(buy_venue=venue("A", rules=rules))) == Reason.BELOW_MIN_SIZE


def test_a_venue_minimum_cost_is_met_at_the_guard_price_of_its_order() -> None:
    # 0.6 BTC bought reaches the 100.50 level: the order goes out at 0.6 x 100.50 = 60.30 >= 60.25.
    rules = replace(venue("A").rules, min_cost=Decimal("60.25"))

    sized = accepted(decide(buy_venue=venue("A", rules=rules), strategy=params(trade_size="0.6")))

    assert sized.buy.amount == Decimal("0.6")


def test_a_notional_limit_sizes_the_sale_down_to_stay_within_it() -> None:
    sale = accepted(decide(sell_venue=venue("B", max_notional=Decimal(50)))).sell

    assert sale.amount == Decimal("0.49261")  # 50 / 101.50, rounded down to the step
    assert sale.price * sale.amount <= Decimal(50)


def test_a_notional_limit_sizes_the_purchase_down_at_its_guard_price() -> None:
    # 0.5 @ 100.00 fits in 75; past it the whole amount is guarded at 100.50: 75 / 100.50 = 0.74626...
    sized = accepted(decide(buy_venue=venue("A", max_notional=Decimal(75))))

    assert sized.buy.amount == Decimal("0.74626")


def test_a_notional_limit_too_small_for_the_minimum_is_over_limit() -> None:
    rules = replace(venue("A").rules, min_amount=Decimal("0.01"))

    decision = decide(buy_venue=venue("A", rules=rules, max_notional=Decimal("0.5")))

    assert rejected(decision) == Reason.OVER_LIMIT


@pytest.mark.parametrize(
    ("usdt", "max_notional", "reason"),
    [("0.3", "0.5", Reason.INSUFFICIENT_BALANCE), ("0.5", "0.3", Reason.OVER_LIMIT)],
)
def test_the_tighter_of_balance_and_limit_names_the_rejection(
    usdt: str, max_notional: str, reason: str
) -> None:
    rules = replace(venue("A").rules, min_amount=Decimal("0.01"))
    poor = venue("A", rules=rules, balances={"USDT": Decimal(usdt)}, max_notional=Decimal(max_notional))

    assert rejected(decide(buy_venue=poor)) == reason


def test_a_trade_size_of_zero_is_below_min_size() -> None:
    assert rejected(decide(strategy=params(trade_size="0"))) == Reason.BELOW_MIN_SIZE


# --- quantization ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "steps", "expected"),
    [
        ("0.123456", ("0.001",), "0.123"),
        ("0.123456", ("0.001", "0.00001"), "0.123"),
        ("0.0019", ("0.001", "0.0005"), "0.001"),
        ("0.0030", ("0.0002", "0.0003"), "0.0030"),
        ("0.0029", ("0.0002", "0.0003"), "0.0024"),
        ("0.123456", ("0", "-1"), "0.123456"),
        ("7", ("5",), "5"),
    ],
)
def test_amounts_round_down_to_a_multiple_of_every_step(
    amount: str, steps: tuple[str, ...], expected: str
) -> None:
    assert quantize_amount(Decimal(amount), *map(Decimal, steps)) == Decimal(expected)


step_values = st.sampled_from(["0.00001", "0.0001", "0.0005", "0.001", "0.0025", "0.01", "0.3", "1"]).map(
    Decimal
)


@given(amount=st.decimals("0", "1000", places=10), steps=st.lists(step_values, min_size=1, max_size=3))
def test_quantized_amounts_are_the_largest_common_multiple_not_above_the_amount(
    amount: Decimal, steps: list[Decimal]
) -> None:
    result = quantize_amount(amount, *steps)

    assert Decimal(0) <= result <= amount
    assert all(result % step == 0 for step in steps)
    # One more of the coarsest common step would overshoot.
    assert not any(
        all((result + extra) % step == 0 for step in steps) and result + extra <= amount
        for extra in (s * k for s in steps for k in range(1, 40))
    )


# --- properties over generated pairs of books ------------------------------------------------------

REJECTIONS = {
    Reason.BELOW_MIN_PROFIT,
    Reason.BELOW_MIN_SIZE,
    Reason.INSUFFICIENT_BALANCE,
    Reason.OVER_LIMIT,
}

pairs = st.tuples(nearby_books(), venues("a"), venues("b"), strategy_params()).map(lambda c: (*c[0], *c[1:]))


def assert_within_every_limit(
    sized: SizedTrade,
    buy: Quote,
    sell: Quote,
    buy_venue: VenueState,
    sell_venue: VenueState,
    p: StrategyParams,
) -> None:
    amount = sized.buy.amount
    assert sized.sell.amount == amount
    assert Decimal(0) < amount <= p.trade_size
    for state, leg in ((buy_venue, sized.buy), (sell_venue, sized.sell)):
        step = state.rules.amount_step
        assert step <= 0 or amount % step == 0
        assert amount >= state.rules.min_amount
        assert amount * leg.worst_price >= state.rules.min_cost
    assert amount * sized.buy.worst_price * (1 + buy_venue.fees.taker) <= buy_venue.free("USDT")
    assert amount <= sell_venue.free("BTC")
    bought = fill(buy.asks, Side.BUY, amount, buy_venue.fees.taker)
    sold = fill(sell.bids, Side.SELL, amount, sell_venue.fees.taker)
    for state, fills in ((buy_venue, bought), (sell_venue, sold)):
        assert state.max_notional is None or notional(fills) <= state.max_notional
    # the buy's limit bounds what it can cost however the book moves before it lands
    assert buy_venue.max_notional is None or amount * sized.buy.worst_price <= buy_venue.max_notional
    assert sized.net_profit == notional(sold) - notional(bought) - fees_paid(bought) - fees_paid(sold)


@given(case=pairs)
def test_every_accepted_decision_is_profitable_and_within_every_limit(
    case: tuple[Quote, Quote, VenueState, VenueState, StrategyParams],
) -> None:
    buy, sell, buy_venue, sell_venue, p = case

    decision = evaluate_pair(buy, sell, buy_venue, sell_venue, p, NOW)

    if buy.best_ask >= sell.best_bid:
        assert decision is None
        return
    assert decision is not None
    assert decision.key == ("BTC/USDT", "a", "b")
    if not decision.accepted:
        assert decision.reason in REJECTIONS
        # Sizing alone meets the bar: the final re-check of a sized trade never has to step in.
        assert decision.sized is None
        return
    sized = accepted(decision)
    assert sized.net_profit > 0
    assert sized.net_bps >= p.min_profit_bps
    # filled in full at both limit prices, the trade still clears the bar
    paid = sized.buy.amount * sized.buy.worst_price
    at_limits = sized.sell.amount * sized.sell.worst_price * (1 - sell_venue.fees.taker) - paid * (
        1 + buy_venue.fees.taker
    )
    assert abs(at_limits - sized.worst_net) < Decimal("1e-18")  # Decimal's 28 digits apart
    assert at_limits > 0
    assert at_limits * BPS >= p.min_profit_bps * paid - Decimal("1e-14")
    assert_within_every_limit(sized, buy, sell, buy_venue, sell_venue, p)


@given(case=pairs)
def test_a_crossing_that_fees_eat_is_never_traded(
    case: tuple[Quote, Quote, VenueState, VenueState, StrategyParams],
) -> None:
    buy, sell, buy_venue, sell_venue, p = case
    received = sell.best_bid * (1 - sell_venue.fees.taker)
    paid = buy.best_ask * (1 + buy_venue.fees.taker)

    decision = evaluate_pair(buy, sell, buy_venue, sell_venue, p, NOW)

    if buy.best_ask < sell.best_bid and received <= paid:
        assert rejected(decision) == Reason.BELOW_MIN_PROFIT


def test_generated_pairs_do_reach_accepted_decisions() -> None:
    """Guards the properties above against passing on nothing but rejections."""

    def accepted(case: tuple[Quote, Quote, VenueState, VenueState, StrategyParams]) -> bool:
        decision = evaluate_pair(*case, NOW)
        return decision is not None and decision.accepted

    find(pairs, accepted)


@given(books=st.lists(quotes(), min_size=2, max_size=5))
def test_find_decisions_decides_exactly_the_crossing_ordered_pairs(books: list[Quote]) -> None:
    named = {f"v{i}": replace(book, venue=f"v{i}") for i, book in enumerate(books)}
    states = {name: venue(name) for name in named}

    decisions = find_decisions(named, states, params(), NOW)

    crossing = {(b, s) for b in named for s in named if b != s and named[b].best_ask < named[s].best_bid}
    assert {(d.buy_venue, d.sell_venue) for d in decisions} == crossing
    assert len(decisions) == len(crossing)


def test_net_bps_is_net_profit_over_cost() -> None:
    sized = accepted(decide())

    assert sized.net_bps == sized.net_profit / (sized.buy.price * sized.buy.amount) * BPS
