"""The replay engine on hand-made and generated quotes: exact PnL and fees, latency, TTL,
inventory, no look-ahead, and the vectorized path deciding exactly as the quote-by-quote one."""

from __future__ import annotations

import dataclasses
import gc
from decimal import Decimal

import numpy as np
import pytest

from backtest.engine import QuoteArrays, Replay, Result, Setup, SimTrade, from_quotes
from backtest.metrics import summarize
from devtools.bench.backtest import bench_setup, synthetic_quotes
from tests.core.builders import levels, params, quote, venue
from trading.core.policy import Outcome
from trading.core.strategy import Reason
from trading.core.types import MarketRules, Quote

T0 = 1_700_000_000_000
VENUES = ("a", "b")


def two_venues(latency: dict[str, int] | None = None, **strategy: object) -> Setup:
    """a charges 10 bps, b 20 bps; each holds 1 BTC and 1,000 USDT."""
    funds = {"BTC": Decimal(1), "USDT": Decimal(1000)}
    venues = {
        "a": venue("a", taker="0.001", balances=dict(funds)),
        "b": venue("b", taker="0.002", balances=dict(funds)),
    }
    settings: dict[str, object] = {"trade_size": "0.5"}
    settings.update(strategy)
    return Setup(params(**settings), venues, latency or {})  # type: ignore[arg-type]


def at(ms: int, name: str, bid: str, ask: str, size: str = "1") -> Quote:
    return quote(name, levels((bid, size)), levels((ask, size)), received_ts=T0 + ms)


def crossing_from_1_ms() -> list[Quote]:
    """a's ask of 100 under b's bid of 101, from 1 ms on."""
    return [at(0, "a", "99", "100"), at(1, "b", "101", "102")]


def replay(setup: Setup, quotes: list[Quote], exact: bool = True) -> Result:
    return Replay(setup, "BTC/USDT").run([from_quotes(quotes, VENUES)], exact=exact)


def test_a_hand_computed_trade_gives_the_exact_pnl_fees_and_balances() -> None:
    # Given a's ask of 100 under b's bid of 101, 1 BTC at each, and orders that take 5 ms to land
    quotes = [at(0, "a", "99", "100"), at(1, "b", "101", "102"), at(2, "a", "99", "100")]

    result = replay(two_venues(latency={"a": 5, "b": 5}), quotes)

    # Then 0.5 BTC is bought on a for 50 (fee 0.05) and sold on b for 50.5 (fee 0.101), once:
    # the gap persisting over a's second quote, while the trade is on its way, is the same one.
    [trade] = result.trades
    assert (trade.amount, trade.gross_pnl, trade.fees, trade.net_pnl) == (
        Decimal("0.5"),
        Decimal("0.5"),
        Decimal("0.151"),
        Decimal("0.349"),
    )
    assert result.balances["a"] == {"BTC": Decimal("1.5"), "USDT": Decimal("949.95")}
    assert result.balances["b"] == {"BTC": Decimal("0.5"), "USDT": Decimal("1050.399")}
    [seen] = result.opportunities
    assert (seen.ticks, seen.lifetime_ms) == (2, 1)
    metrics = summarize(result)
    assert (Decimal(metrics["net_pnl"]), Decimal(metrics["fees"]), metrics["trades"]) == (
        Decimal("0.349"),
        Decimal("0.151"),
        1,
    )


def test_a_settled_crossing_trades_again_on_a_newer_book_that_still_clears_the_bar() -> None:
    quotes = [
        at(0, "a", "99", "100"),
        at(1, "b", "101", "102"),
        at(2, "a", "99", "100"),
        at(3, "a", "99", "101"),
    ]

    result = replay(two_venues(), quotes)

    # Then the first trade has settled by a's next book, which trades the crossing again; a's
    # third book closes it
    assert [(t.decided_ms - T0, t.filled) for t in result.trades] == [(1, True), (2, True)]
    assert [(o.first_ms - T0, o.last_ms - T0) for o in result.opportunities] == [(1, 1), (2, 2)]


def test_latency_makes_a_known_trade_miss_its_sell_leg() -> None:
    # Given the same gap, and b's bid falling below the sale's guard price 5 ms after the decision
    quotes = [at(0, "a", "99", "100"), at(10, "b", "101", "102"), at(15, "b", "100.5", "102")]

    on_time = replay(two_venues(latency={"b": 2}), quotes)
    late = replay(two_venues(latency={"b": 8}), quotes)

    # Then an order reaching b within 5 ms sells at 101; one that takes 8 ms finds 100.5 and sells
    # nothing, leaving the bought BTC on a unhedged
    assert on_time.trades[0].filled
    [missed] = late.trades
    assert (missed.bought, missed.sold) == (Decimal("0.5"), Decimal(0))
    assert late.balances["b"]["BTC"] == Decimal(1)
    assert late.balances["a"]["BTC"] == Decimal("1.5")
    assert summarize(late)["trades_missed"] == 1


def test_an_order_slower_than_the_ttl_is_never_sent() -> None:
    quotes = [at(0, "a", "99", "100"), at(1, "b", "101", "102")]

    result = replay(two_venues(latency={"b": 4_000}, ttl_ms=3_000), quotes)

    assert result.trades == []
    assert result.rejected == {"ttl_exceeded": 1}
    assert result.balances["b"]["BTC"] == Decimal(1)


def test_running_out_of_btc_on_the_dear_venue_stops_that_side_only() -> None:
    # Given a gap that opens and closes again and again: buy on a, sell on b
    quotes = []
    for i in range(4):
        quotes += [at(10 * i, "a", "99", "100"), at(10 * i + 1, "b", "101", "102")]
        quotes += [at(10 * i + 2, "b", "99.5", "100.5")]
    # and then the reverse gap: buy on b, sell on a
    quotes += [at(50, "b", "98", "98.5")]

    result = replay(two_venues(), quotes)

    # Then b's 1 BTC goes in 0.5 + 0.5; the third crossing finds none to sell; the reverse side
    # still trades, selling a's BTC
    sides = [(t.buy_venue, t.sell_venue, t.amount) for t in result.trades]
    assert sides == [("a", "b", Decimal("0.5")), ("a", "b", Decimal("0.5")), ("b", "a", Decimal("0.5"))]
    assert result.rejected[Reason.INSUFFICIENT_BALANCE] == 2
    assert result.balances["b"]["BTC"] == Decimal("0.5")


def joined(first: QuoteArrays, second: QuoteArrays) -> QuoteArrays:
    """One column set of `first`'s quotes followed by `second`'s (top of book only)."""
    columns = ("ts", "venue", "bid", "ask", "bid_size", "ask_size")
    merged = {name: np.concatenate([getattr(first, name), getattr(second, name)]) for name in columns}
    return QuoteArrays(symbol=first.symbol, venues=first.venues, **merged)


@pytest.mark.parametrize("exact", [True, False], ids=["quote-by-quote", "vectorized"])
def test_no_quote_after_the_decision_time_can_change_a_decision(exact: bool) -> None:
    # Given generated quotes, cut at some moment, and two different futures after it
    data = synthetic_quotes(20_000, seed=3, jump_rate=0.003)
    cut = 12_000
    cut_ms = int(data.ts[cut])
    other = synthetic_quotes(8_000, seed=99, jump_rate=0.01, start_ms=cut_ms + 1)
    histories = [data, joined(data.slice(0, cut + 1), other)]

    # replayed in chunks that straddle the cut
    runs = [
        Replay(bench_setup(), data.symbol).run(history.chunks(7_000), exact=exact) for history in histories
    ]

    # Then every decision up to the cut is the same, whatever came after it
    def decided_by_cut(result: Result) -> tuple[list[object], list[object]]:
        opened = sorted(
            (o.first_ms, o.buy_venue, o.sell_venue, o.accepted, o.reason, o.amount, o.expected_net)
            for o in result.opportunities
            if o.first_ms <= cut_ms
        )
        taken = [
            (t.decided_ms, t.buy_venue, t.sell_venue, t.amount, t.expected_net)
            for t in result.trades
            if t.decided_ms <= cut_ms
        ]
        return opened, taken

    first, second = (decided_by_cut(run) for run in runs)
    assert first == second
    assert len(first[1]) > 5  # decisions were taken before the cut
    assert runs[0].trades != runs[1].trades  # and the futures did differ


@pytest.mark.parametrize("exact", [True, False], ids=["quote-by-quote", "vectorized"])
def test_every_decision_is_the_same_when_the_data_ends_at_its_moment(exact: bool) -> None:
    # Given a replay, and for a sample of its decisions the same replay of only the quotes
    # received up to that decision
    data = synthetic_quotes(20_000, seed=8, jump_rate=0.003)
    full = Replay(bench_setup(), data.symbol).run(data.chunks(7_000), exact=exact)
    decisions = sorted(full.opportunities, key=lambda o: o.first_ms)
    assert len(decisions) > 30

    for seen in decisions[:: len(decisions) // 15]:
        end = int(np.searchsorted(data.ts, seen.first_ms, side="right"))
        cut = Replay(bench_setup(), data.symbol).run(data.slice(0, end).chunks(7_000), exact=exact)

        # Then the decision comes out the same without anything received after it
        [same] = [
            o
            for o in cut.opportunities
            if (o.first_ms, o.buy_venue, o.sell_venue) == (seen.first_ms, seen.buy_venue, seen.sell_venue)
        ]
        assert (same.accepted, same.reason, same.amount, same.expected_net) == (
            seen.accepted,
            seen.reason,
            seen.amount,
            seen.expected_net,
        )


@pytest.mark.parametrize("chunk_rows", [997, 20_000, 60_000])
def test_the_vectorized_replay_decides_exactly_as_the_quote_by_quote_one(chunk_rows: int) -> None:
    data = synthetic_quotes(60_000, seed=11, jump_rate=0.002)
    chunks = data.chunks(chunk_rows)

    fast = Replay(bench_setup(), data.symbol).run(chunks)
    exact = Replay(bench_setup(), data.symbol).run(data.chunks(4_999), exact=True)

    assert len(exact.trades) > 20
    assert fast.trades == exact.trades
    assert fast.opportunities == exact.opportunities
    assert fast.rejected == exact.rejected
    assert fast.balances == exact.balances
    assert fast.inventory == exact.inventory


def test_both_paths_agree_on_recorded_depth_with_short_balances() -> None:
    # Given books several levels deep and a venue that can afford only part of what is offered
    quotes = []
    for i in range(40):
        a_ask = "100" if i % 3 else "103"
        quotes.append(quote("a", levels(("99", "1")), levels((a_ask, "0.2"), ("100.5", "0.7")), T0 + 7 * i))
        quotes.append(
            quote("b", levels(("101", "0.3"), ("100.8", "1")), levels(("102", "1")), T0 + 7 * i + 3)
        )
    setup = dataclasses.replace(two_venues(latency={"a": 4, "b": 9}), params=params(trade_size="0.9"))
    data: QuoteArrays = from_quotes(quotes, VENUES)

    fast = Replay(setup, "BTC/USDT").run(data.chunks(13))
    exact = Replay(setup, "BTC/USDT").run([data], exact=True)

    assert len(exact.trades) >= 3
    assert fast.trades == exact.trades
    assert fast.opportunities == exact.opportunities
    assert fast.balances == exact.balances


# --- quotes of one moment -----------------------------------------------------------------------


def minute_bars(first: str) -> list[Quote]:
    """Both venues' bars at the same moments, `first`'s recorded first at each. a's ask dips under
    b's bid at minute 2 and again at minute 4, both venues moving each time."""
    bars = {
        "a": [("99", "100"), ("99", "100"), ("102", "103"), ("99", "100"), ("99.5", "100.2")],
        "b": [("99.5", "100.5"), ("99.5", "100.5"), ("104", "105"), ("99.5", "100.5"), ("101", "102")],
    }
    second = "b" if first == "a" else "a"
    return [at(minute * 60_000, name, *bars[name][minute]) for minute in range(5) for name in (first, second)]


@pytest.mark.parametrize("exact", [True, False])
def test_quotes_of_one_moment_are_decided_together_whatever_order_they_were_recorded_in(exact: bool) -> None:
    a_first = replay(two_venues(), minute_bars("a"), exact=exact)
    b_first = replay(two_venues(), minute_bars("b"), exact=exact)

    # Then at minute 2 the trade buys at a's new ask and sells at b's new bid, never against a
    # book the moment had already replaced; at zero latency no leg misses
    assert [(t.decided_ms - T0, t.buy_price, t.sell_price) for t in a_first.trades] == [
        (120_000, Decimal(103), Decimal(104)),
        (240_000, Decimal("100.2"), Decimal(101)),
    ]
    assert all(trade.filled for trade in a_first.trades)
    assert b_first.trades == a_first.trades
    assert b_first.opportunities == a_first.opportunities
    assert b_first.balances == a_first.balances


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
def test_a_moment_split_across_chunks_is_still_one_moment(chunk_rows: int) -> None:
    data = from_quotes(minute_bars("b"), VENUES)

    split = Replay(two_venues(), "BTC/USDT").run(data.chunks(chunk_rows))
    whole = Replay(two_venues(), "BTC/USDT").run([data], exact=True)

    assert len(whole.trades) == 2
    assert split.trades == whole.trades
    assert split.opportunities == whole.opportunities


def test_the_vectorized_replay_decides_moments_exactly_as_the_quote_by_quote_one() -> None:
    # Given generated quotes stamped to the 100 ms, so that many moments hold several venues
    generated = synthetic_quotes(60_000, seed=5, jump_rate=0.002)
    data = dataclasses.replace(generated, ts=generated.ts // 100 * 100)

    fast = Replay(bench_setup(), data.symbol).run(data.chunks(997))
    exact = Replay(bench_setup(), data.symbol).run(data.chunks(4_999), exact=True)

    assert len(exact.trades) > 20
    assert fast.trades == exact.trades
    assert fast.opportunities == exact.opportunities
    assert fast.balances == exact.balances


def test_crossings_before_fees_are_counted_apart_from_opportunities_past_fees() -> None:
    # Given a crossing too thin to pay a's and b's fees, then one wide enough
    quotes = [
        at(0, "a", "99", "100"),
        at(1, "b", "100.1", "102"),
        at(2, "b", "99", "102"),
        at(3, "b", "101", "102"),
    ]

    metrics = summarize(replay(two_venues(), quotes))

    assert (metrics["crossings"], metrics["opportunities_seen"], metrics["trades"]) == (2, 1, 1)
    assert metrics["rejected"] == {"below_min_profit": 1}


def test_a_crossing_rejected_for_balance_that_turns_tradeable_is_one_opportunity_seen() -> None:
    # Given a, which must buy at least 0.1 BTC and has 5 USDT: at a's ask of 100 it can buy 0.05,
    # at 40 it can buy 0.12
    setup = two_venues()
    poor = dataclasses.replace(
        setup.venues["a"],
        balances={"BTC": Decimal(1), "USDT": Decimal(5)},
        rules=MarketRules(min_amount=Decimal("0.1")),
    )
    setup = dataclasses.replace(setup, venues={**setup.venues, "a": poor})
    quotes = [*crossing_from_1_ms(), at(2, "a", "39", "40"), at(3, "a", "99", "102")]

    result = replay(setup, quotes)
    metrics = summarize(result)

    # Then the listener's two records (rejected, then accepted) are one opportunity, seen from
    # 1 ms to 2 ms, and taken
    assert [(o.reason, o.first_ms - T0) for o in result.opportunities] == [
        ("insufficient_balance", 1),
        ("accepted", 2),
    ]
    assert (metrics["opportunities_seen"], metrics["opportunities_taken"]) == (1, 1)
    assert (metrics["opportunities_fleeting"], metrics["avg_opportunity_ms"]) == (0, 1.0)
    assert metrics["rejected"] == {"insufficient_balance": 1}


def test_an_opportunity_seen_at_one_moment_only_is_counted_apart_and_has_no_lifetime() -> None:
    # Given one crossing that lasts over a's next book (its trade on the way), and one that is gone
    # by b's next book
    later = [at(2, "a", "99", "100"), at(10, "a", "99", "102"), at(20, "b", "103", "104")]
    quotes = [*crossing_from_1_ms(), *later, at(21, "b", "101", "104")]

    metrics = summarize(replay(two_venues(latency={"a": 5, "b": 5}), quotes))

    # Then both are opportunities seen and taken, one of them fleeting, which the average lifetime
    # leaves out rather than counting it as 0 ms
    assert (metrics["opportunities_seen"], metrics["opportunities_taken"]) == (2, 2)
    assert metrics["opportunities_fleeting"] == 1
    assert metrics["avg_opportunity_ms"] == 1.0


# --- settled like live: retries, hedges, and what is left open ----------------------------------


def roles(trade: SimTrade) -> list[tuple[str, int, Decimal]]:
    return [(order.role.value, order.attempt, order.filled) for order in trade.orders]


def test_a_missed_leg_is_retried_within_its_guard_and_caught_when_the_book_comes_back() -> None:
    # Given b's bid under the sale's guard when the sale lands (8 ms), and back at 101 before the
    # retry sent then lands, 8 ms later
    quotes = [
        at(0, "a", "99", "100"),
        at(10, "b", "101", "102"),
        at(15, "b", "100.5", "102"),
        at(20, "b", "101", "102"),
    ]

    [trade] = replay(two_venues(latency={"b": 8}), quotes).trades

    assert roles(trade) == [("buy", 0, Decimal("0.5")), ("sell", 0, 0), ("sell", 1, Decimal("0.5"))]
    assert (trade.outcome, trade.settled_ms - T0, trade.net_pnl) == (Outcome.MATCHED, 26, Decimal("0.349"))


def test_what_stays_one_sided_is_hedged_back_where_it_filled_within_the_loss_limit() -> None:
    # Given b's bid gone for good after the decision, and a's bid 20 bps under the price paid
    quotes = [at(0, "a", "99.81", "100.01"), at(10, "b", "101", "102"), at(15, "b", "100.5", "102")]

    result = replay(two_venues(latency={"b": 8}), quotes)

    [trade] = result.trades
    assert roles(trade) == [
        ("buy", 0, Decimal("0.5")),
        ("sell", 0, 0),
        ("sell", 1, 0),
        ("sell", 2, 0),
        ("hedge", 0, Decimal("0.5")),
    ]
    # bought 0.5 at 100.01 (fee 0.050005), sold back on a at 99.81 (fee 0.049905): a loss, flat
    assert (trade.outcome, trade.unhedged, trade.net_pnl) == (Outcome.HEDGED, 0, Decimal("-0.19991"))
    assert result.balances["a"]["BTC"] == Decimal(1)
    assert summarize(result)["win_rate"] == 0


def test_a_position_the_hedges_cannot_close_is_marked_at_its_venues_market_when_the_run_ends() -> None:
    # Given a's bid 100 bps under the price paid: past the hedge's 50 bps loss limit; both
    # markets fall later, without crossing
    quotes = [
        *(at(0, "a", "99", "100"), at(10, "b", "101", "102"), at(15, "b", "100.5", "102")),
        *(at(40, "a", "97", "98"), at(40, "b", "96", "97")),
    ]

    [trade] = replay(two_venues(latency={"b": 8}), quotes).trades

    assert trade.outcome is Outcome.OPEN
    assert [role for role, _, filled in roles(trade) if filled] == ["buy"]
    # 0.5 BTC paid 50 (fee 0.05) is worth 0.5 x 97.5 at a's last mid: a loss of 1.3, not a gain
    assert (trade.mark, trade.net_pnl) == (Decimal("97.5"), Decimal("-1.30"))


def test_a_replay_leaves_no_garbage_cycles_and_the_collector_as_it_found_it() -> None:
    # Given generated quotes with crossings, missed legs, retries and hedges
    data = synthetic_quotes(60_000, jump_rate=0.002)
    gc.collect()

    # When it is replayed (with the cyclic collector paused while it runs)
    result = Replay(bench_setup(), "BTC/USDT").run(data.chunks(20_000))

    # Then the collector runs again, and has nothing of the replay's to free
    assert gc.isenabled()
    assert any(not trade.filled for trade in result.trades)
    del result
    assert gc.collect() == 0
    # and a caller that had paused it finds it still paused
    gc.disable()
    try:
        Replay(bench_setup(), "BTC/USDT").run(data.chunks(20_000))
        assert not gc.isenabled()
    finally:
        gc.enable()
