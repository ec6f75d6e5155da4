"""Simulated venues: one deterministic market that every process computes alike, with realistic
books and gaps that open wider than two taker fees, then close again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from statistics import median

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading.core.strategy import find_decisions
from trading.core.types import Fees, Quote, Side, StrategyParams, VenueState
from trading.core.validate import quote_to_payload
from trading.venues.base import OrderRequest, VenueError
from trading.venues.simulated import SimulatedGateway, simulated_book, venue_mid

from .conftest import ROOT

SYMBOL = "BTC/USDT"
START_MS = 1_700_000_000_000
DEMO_FEES = {"sim-alpha": "0.0005", "sim-bravo": "0.00075", "sim-charlie": "0.001", "sim-delta": "0.0006"}


def _funded(name: str, taker: str) -> VenueState:
    return VenueState(name, Fees(Decimal(taker)), balances={"BTC": Decimal(1), "USDT": Decimal(30_000)})


def _books_at(t_ms: int, seed: int = 7) -> dict[str, Quote]:
    return {venue: simulated_book(seed, venue, SYMBOL, t_ms) for venue in DEMO_FEES}


def test_same_inputs_give_the_same_book_in_another_process() -> None:
    here = quote_to_payload(simulated_book(7, "sim-alpha", SYMBOL, START_MS, depth=8))
    script = (
        "import json; from trading.venues.simulated import simulated_book; "
        "from trading.core.validate import quote_to_payload; "
        f"print(json.dumps(quote_to_payload(simulated_book(7, 'sim-alpha', '{SYMBOL}', {START_MS}, 8))))"
    )
    there = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(there) == here


def test_book_depends_on_venue_time_and_seed() -> None:
    book = simulated_book(7, "sim-alpha", SYMBOL, START_MS)
    assert simulated_book(7, "sim-alpha", SYMBOL, START_MS) == book
    assert simulated_book(7, "sim-bravo", SYMBOL, START_MS).bids != book.bids
    assert simulated_book(7, "sim-alpha", SYMBOL, START_MS + 1_000).bids != book.bids
    assert simulated_book(8, "sim-alpha", SYMBOL, START_MS).bids != book.bids


@given(
    seed=st.integers(min_value=0, max_value=2**31),
    venue=st.sampled_from(sorted(DEMO_FEES)),
    symbol=st.sampled_from(["BTC/USDT", "BTC/USD", "ETH/USDT", "SOL/USDT"]),
    t_ms=st.integers(min_value=0, max_value=4_000_000_000_000),
    depth=st.integers(min_value=1, max_value=20),
)
def test_books_are_sorted_uncrossed_and_positive(
    seed: int, venue: str, symbol: str, t_ms: int, depth: int
) -> None:
    book = simulated_book(seed, venue, symbol, t_ms, depth)
    bid_prices = [price for price, _ in book.bids]
    ask_prices = [price for price, _ in book.asks]
    assert len(book.bids) == len(book.asks) == depth
    assert bid_prices == sorted(set(bid_prices), reverse=True)
    assert ask_prices == sorted(set(ask_prices))
    assert book.best_bid < book.best_ask
    assert all(price > 0 and amount > 0 for price, amount in book.bids + book.asks)
    assert (book.seq, book.received_ts, book.venue_ts) == (0, t_ms, t_ms)


def test_btc_trades_near_30000_with_a_spread_of_a_few_bps_and_growing_depth() -> None:
    for t_ms in range(START_MS, START_MS + 600_000, 60_000):
        book = simulated_book(7, "sim-charlie", "BTC/USD", t_ms)
        spread_bps = (book.best_ask - book.best_bid) / book.best_bid * 10_000
        assert Decimal(27_000) < book.best_bid < Decimal(33_000)
        assert Decimal(2) <= spread_bps <= Decimal(8)
        assert sum(a for _, a in book.asks[5:]) > sum(a for _, a in book.asks[:5])


def test_over_an_hour_gaps_beyond_both_fees_open_and_close_while_books_mostly_agree() -> None:
    venues = {name: _funded(name, fee) for name, fee in DEMO_FEES.items()}
    params = StrategyParams((SYMBOL,), min_profit_bps=Decimal(5), trade_size=Decimal("0.05"))
    crossed_seconds = profitable_seconds = episodes = 0
    mid_gaps_bps: list[float] = []
    was_profitable = False
    for second in range(3_600):
        t_ms = START_MS + second * 1_000
        books = _books_at(t_ms)
        mids = [venue_mid(7, venue, SYMBOL, t_ms) for venue in DEMO_FEES]
        mid_gaps_bps.append((max(mids) - min(mids)) / min(mids) * 10_000)
        crossed_seconds += any(a.best_ask < b.best_bid for a in books.values() for b in books.values())
        profitable = any(d.accepted for d in find_decisions(books, venues, params, t_ms))
        profitable_seconds += profitable
        episodes += profitable and not was_profitable
        was_profitable = profitable
    # A gap that pays both taker fees and the minimum profit opens every minute or so...
    assert episodes >= 60
    # ...lasts seconds, not minutes...
    assert profitable_seconds / episodes < 10
    # ...and most of the time the venues agree to within their spreads.
    assert crossed_seconds < 0.4 * 3_600
    assert median(mid_gaps_bps) < 3


def test_gateway_quotes_at_its_clock_and_refuses_orders() -> None:
    gateway = SimulatedGateway("sim-delta", seed=7, clock=lambda: START_MS)
    book = asyncio.run(gateway.fetch_order_book(SYMBOL, 5))
    assert book == simulated_book(7, "sim-delta", SYMBOL, START_MS, 5)
    assert gateway.capabilities == frozenset({"books"})
    request = OrderRequest(SYMBOL, Side.BUY, Decimal("0.01"), book.best_ask, "sim-delta-1-buy")
    with pytest.raises(VenueError, match="only quotes"):
        asyncio.run(gateway.create_order(request))
    with pytest.raises(VenueError, match="paper gateway"):
        asyncio.run(gateway.fetch_balance())
