"""`manage.py bench backtest`: the engine's quotes/s on generated quotes held in memory, against a
bare loop over the same quotes that only tracks each venue's best bid and ask.

The quotes follow one random walk, each venue quoting it with its own spread and a little noise,
and now and then one venue's quote jumps away from the others for a moment: the dislocations
arbitrage lives on. Nothing touches the database.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from backtest.engine import QuoteArrays, Replay, Setup
from trading.core.types import Fees, StrategyParams, VenueState

SYMBOL = "BTC/USDT"
VENUES = ("alpha", "bravo", "charlie", "delta", "echo")
DEFAULT_QUOTES = 5_000_000
CHUNK_ROWS = 500_000
START_MS = 1_700_000_000_000


def synthetic_quotes(
    count: int,
    venues: tuple[str, ...] = VENUES,
    seed: int = 7,
    jump_rate: float = 0.0002,
    start_ms: int = START_MS,
) -> QuoteArrays:
    """`count` quotes, 0 to 3 ms apart, over `venues`: prices in whole cents, sizes in 0.0001 lots.
    About `jump_rate` of them are dislocated by 10 to 60 either way."""
    rng = np.random.default_rng(seed)
    venue = rng.integers(0, len(venues), count, dtype=np.int8)
    mid = 30_000 + np.cumsum(rng.normal(0, 0.05, count))
    jumps = rng.random(count) < jump_rate
    offset = rng.normal(0, 0.1, count) + jumps * rng.choice([-1.0, 1.0], count) * rng.uniform(10, 60, count)
    half_spread = 0.5 + 0.25 * venue
    return QuoteArrays(
        symbol=SYMBOL,
        venues=venues,
        ts=start_ms + np.cumsum(rng.integers(0, 4, count)),
        venue=venue,
        bid=np.round(mid + offset - half_spread, 2),
        ask=np.round(mid + offset + half_spread, 2),
        bid_size=np.round(rng.uniform(0.01, 2, count), 4),
        ask_size=np.round(rng.uniform(0.01, 2, count), 4),
    )


def bench_setup(venues: tuple[str, ...] = VENUES) -> Setup:
    """Low fees and deep pockets on every venue, 5 bps minimum profit, a few ms of latency."""
    funds = {"BTC": Decimal(50), "USDT": Decimal(1_500_000)}
    states = {name: VenueState(name, Fees(taker=Decimal("0.0002")), balances=dict(funds)) for name in venues}
    params = StrategyParams(symbols=(SYMBOL,), min_profit_bps=Decimal(5), trade_size=Decimal("0.5"))
    return Setup(params, states, {name: 2 + i for i, name in enumerate(venues)})


def bare_loop(quotes: QuoteArrays) -> dict[int, tuple[float, float]]:
    """The least a replay must do: walk every quote and keep each venue's best bid and ask."""
    best: dict[int, tuple[float, float]] = {}
    for chunk in quotes.chunks(CHUNK_ROWS):
        for venue, bid, ask in zip(chunk.venue.tolist(), chunk.bid.tolist(), chunk.ask.tolist(), strict=True):
            best[venue] = (bid, ask)
    return best


def run(out: Callable[[str], Any], quotes: int | None = None, **_: Any) -> dict[str, float]:
    count = quotes or DEFAULT_QUOTES
    out(f"generating {count:,} quotes over {len(VENUES)} venues")
    data = synthetic_quotes(count)
    started = time.perf_counter()
    result = Replay(bench_setup(), SYMBOL).run(data.chunks(CHUNK_ROWS))
    engine_s = time.perf_counter() - started
    out(
        f"engine: {engine_s:.2f} s, {result.taken} trades, "
        f"{len(result.opportunities)} opportunities, {sum(result.rejected.values())} rejected"
    )
    started = time.perf_counter()
    bare_loop(data)
    baseline_s = time.perf_counter() - started
    out(f"bare loop: {baseline_s:.2f} s")
    return {
        "quotes": count,
        "trades": result.taken,
        "quotes_per_s": round(count / engine_s),
        "baseline_quotes_per_s": round(count / baseline_s),
        "ratio": round(baseline_s / engine_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
