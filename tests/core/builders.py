"""Quotes, venues and strategy parameters for the pure core's tests, by hand and by hypothesis.

Generated prices are whole cents and amounts whole multiples of a small lot, the precision real venues
trade at, so every product and sum stays exact within Decimal's default 28 digits.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from trading.core.types import Fees, Level, MarketRules, Quote, StrategyParams, VenueState

NOW = 1_700_000_000_000
CENT = Decimal("0.01")
LOT = Decimal("0.001")


def levels(*pairs: tuple[str, str]) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(amount)) for price, amount in pairs)


def quote(
    venue: str,
    bids: tuple[Level, ...],
    asks: tuple[Level, ...],
    received_ts: int = NOW,
    seq: int = 1,
) -> Quote:
    return Quote(venue=venue, symbol="BTC/USDT", bids=bids, asks=asks, received_ts=received_ts, seq=seq)


def venue(name: str, taker: str = "0.001", **fields: object) -> VenueState:
    """A healthy venue with plenty of both assets unless `fields` say otherwise."""
    values: dict[str, object] = {
        "name": name,
        "fees": Fees(taker=Decimal(taker)),
        "balances": {"BTC": Decimal(100), "USDT": Decimal(10_000_000)},
    }
    values.update(fields)
    return VenueState(**values)  # type: ignore[arg-type]


def params(min_profit_bps: str = "0", trade_size: str = "1", **fields: object) -> StrategyParams:
    return StrategyParams(
        symbols=("BTC/USDT",),
        min_profit_bps=Decimal(min_profit_bps),
        trade_size=Decimal(trade_size),
        **fields,  # type: ignore[arg-type]
    )


def _cents(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(lambda n: n * CENT)


def lot_amounts(max_lots: int = 2_000) -> st.SearchStrategy[Decimal]:
    return st.integers(1, max_lots).map(lambda n: n * LOT)


@st.composite
def book_side(draw: st.DrawFn, best: Decimal, rising: bool, max_levels: int = 8) -> tuple[Level, ...]:
    """Levels with distinct prices moving away from `best` (up for asks, down for bids)."""
    gaps = draw(st.lists(_cents(1, 500), min_size=0, max_size=max_levels - 1))
    prices = [best]
    for gap in gaps:
        prices.append(prices[-1] + gap if rising else prices[-1] - gap)
    sizes = draw(st.lists(lot_amounts(), min_size=len(prices), max_size=len(prices)))
    return tuple(zip(prices, sizes, strict=True))


def _book(draw: st.DrawFn, venue_name: str, best_bid: Decimal) -> Quote:
    best_ask = best_bid + draw(_cents(1, 2_000))
    return quote(
        venue_name, bids=draw(book_side(best_bid, rising=False)), asks=draw(book_side(best_ask, rising=True))
    )


@st.composite
def quotes(draw: st.DrawFn, venue_name: str = "a") -> Quote:
    """A valid book around 100,000 (bids below asks), received at NOW."""
    return _book(draw, venue_name, draw(_cents(9_900_000, 10_100_000)))


@st.composite
def nearby_books(draw: st.DrawFn) -> tuple[Quote, Quote]:
    """Books of venues "a" and "b" whose prices are close: b's best bid is a little below or above
    a's best ask, or far enough above it to pay the highest fees several times over."""
    buy = draw(quotes("a"))
    gap = draw(_cents(-1_000, 1_000) | _cents(50_000, 200_000))
    return buy, _book(draw, "b", buy.best_ask + gap)


@st.composite
def venues(draw: st.DrawFn, name: str) -> VenueState:
    """A healthy venue with drawn fees, precision, minimums, limits and balances."""
    optional_money = st.none() | st.integers(0, 300_000).map(Decimal)
    return VenueState(
        name=name,
        fees=Fees(taker=draw(st.sampled_from(["0", "0.0005", "0.001", "0.0026"]).map(Decimal))),
        rules=MarketRules(
            amount_step=draw(st.sampled_from(["0", "0.00001", "0.001", "0.0005", "0.01"]).map(Decimal)),
            min_amount=draw(st.sampled_from(["0", "0.0001", "0.01", "0.5"]).map(Decimal)),
            min_cost=draw(st.sampled_from(["0", "10", "5000"]).map(Decimal)),
        ),
        max_notional=draw(optional_money),
        balances={
            "BTC": draw(st.integers(0, 3_000).map(lambda n: n * LOT)),
            "USDT": draw(st.integers(0, 300_000).map(Decimal)),
        },
    )


def strategy_params() -> st.SearchStrategy[StrategyParams]:
    return st.builds(
        lambda bps, size, slippage: params(str(bps), str(size), slippage_bps=Decimal(slippage)),
        st.integers(0, 30),
        lot_amounts(3_000),
        st.sampled_from([0, 0, 3, 25]),
    )
