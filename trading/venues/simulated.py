"""Simulated venues for offline runs: order books computed from (seed, venue, symbol, time).

Every process that asks for a simulated book at the same millisecond gets the same book, so the
collector in a worker, a test and a backtest all see one market. The market has three layers:

- a fair price common to every venue (seeded sinusoids plus smooth hashed noise), so venues move
  together;
- a small per-venue premium (about a basis point), too small for books to cross on its own;
- occasional dislocations: in each 30-second window a venue may jump by tens of basis points for a
  few seconds, which opens cross-venue gaps wider than two taker fees, then closes them again.

Books have a spread of a few basis points and ten levels whose sizes grow with depth. The math is
plain functions of explicit times, so tests can replay any moment without a clock.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from trading.core.types import Level, Quote, split_symbol
from trading.venues.base import QuotesOnly

BASE_PRICES = {"BTC": 30_000.0, "ETH": 2_000.0}
# (period in seconds, amplitude in bps) of the common fair-price path.
WAVES = ((37.0, 2.0), (181.0, 8.0), (613.0, 25.0), (2477.0, 60.0))
NOISE_BPS = 1.5
PREMIUM_BPS = 1.0
HALF_SPREAD_BPS = (1.5, 3.5)
LEVEL_GAP_BPS = (0.4, 1.2)
TOP_LEVEL_NOTIONAL = 3_000.0  # quote currency at the best level; deeper levels hold more
MAX_LEVELS = 20
WINDOW_MS = 30_000
DISLOCATION_CHANCE = 0.4
DISLOCATION_MS = (3_000.0, 8_000.0)
DISLOCATION_BPS = (20.0, 60.0)
RAMP_MS = 500.0
AMOUNT_STEP = Decimal("0.00001")


def unit_draws(*key: object) -> tuple[float, float, float, float]:
    """Four independent uniforms in [0, 1) from a stable hash of `key`.

    Python's hash() is salted per process; blake2b is not, which is what makes every process
    compute the same market.
    """
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=32).digest()
    a, b, c, d = (int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in range(0, 32, 8))
    return a, b, c, d


def _between(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    return low + (high - low) * u


def base_price(seed: int, base: str) -> float:
    """The level the fair price oscillates around: known assets at realistic prices."""
    known = BASE_PRICES.get(base)
    return known if known is not None else 10.0 + 990.0 * unit_draws(seed, "base", base)[0]


def _noise_bps(seed: int, base: str, t: float) -> float:
    """Hashed values on a one-second grid, linearly interpolated: continuous, never repeating."""
    second = math.floor(t)
    here = unit_draws(seed, "noise", base, second)[0]
    there = unit_draws(seed, "noise", base, second + 1)[0]
    return (2.0 * (here + (there - here) * (t - second)) - 1.0) * NOISE_BPS


def fair_price(seed: int, symbol: str, t_ms: int) -> float:
    """The common fair price of `symbol`'s base asset at `t_ms`, shared by every venue and quote
    currency (BTC/USDT and BTC/USD move together)."""
    base, _ = split_symbol(symbol)
    t = t_ms / 1000.0
    bps = _noise_bps(seed, base, t)
    for index, (period, amplitude) in enumerate(WAVES):
        phase = unit_draws(seed, "wave", base, index)[0]
        bps += amplitude * math.sin(2.0 * math.pi * (t / period + phase))
    return base_price(seed, base) * (1.0 + bps / 10_000.0)


def premium_bps(seed: int, venue: str, symbol: str, t_ms: int) -> float:
    """A venue's slowly wandering premium over the fair price: about a basis point either way."""
    period_u, phase, _, _ = unit_draws(seed, "premium", venue, symbol)
    period_s = 60.0 + 240.0 * period_u
    return PREMIUM_BPS * math.sin(2.0 * math.pi * (t_ms / 1000.0 / period_s + phase))


def dislocation_bps(seed: int, venue: str, symbol: str, t_ms: int) -> float:
    """The venue's dislocation at `t_ms`, in bps of the fair price (0.0 most of the time).

    Each WINDOW_MS window holds at most one dislocation, drawn from the window's hash: whether it
    happens, when it starts, how long it lasts and its signed size. It ramps in and out over
    RAMP_MS and lies wholly inside its window.
    """
    window = t_ms // WINDOW_MS
    happens, start_u, length_u, size_u = unit_draws(seed, "dislocation", venue, symbol, window)
    if happens >= DISLOCATION_CHANCE:
        return 0.0
    length = _between(DISLOCATION_MS, length_u)
    elapsed = t_ms - (window * WINDOW_MS + start_u * (WINDOW_MS - length))
    if elapsed < 0.0 or elapsed > length:
        return 0.0
    signed = 2.0 * size_u - 1.0
    size = math.copysign(_between(DISLOCATION_BPS, abs(signed)), signed)
    return size * min(1.0, elapsed / RAMP_MS, (length - elapsed) / RAMP_MS)


def venue_mid(seed: int, venue: str, symbol: str, t_ms: int) -> float:
    offset = premium_bps(seed, venue, symbol, t_ms) + dislocation_bps(seed, venue, symbol, t_ms)
    return fair_price(seed, symbol, t_ms) * (1.0 + offset / 10_000.0)


def _tick(mid: float) -> Decimal:
    """A price increment of about a millionth of the price (0.01 at 30,000)."""
    return Decimal(1).scaleb(math.floor(math.log10(mid)) - 6)


def _amount(notional: float, mid: float) -> Decimal:
    amount = Decimal(repr(notional / mid)).quantize(AMOUNT_STEP, rounding=ROUND_DOWN)
    return max(amount, AMOUNT_STEP)


def _side(
    seed: int, venue: str, symbol: str, t_ms: int, mid: float, depth: int, side: str
) -> tuple[Level, ...]:
    """`depth` levels of one side, best first: prices step away from `mid` by the venue's
    half-spread and then by a varying gap; sizes grow with depth and vary every second."""
    tick = _tick(mid)
    direction, rounding = (-1.0, ROUND_FLOOR) if side == "bid" else (1.0, ROUND_CEILING)
    offset_bps = _between(HALF_SPREAD_BPS, unit_draws(seed, "spread", venue, symbol)[0])
    second = t_ms // 1000
    levels: list[Level] = []
    for level in range(depth):
        gap_u, size_u, _, _ = unit_draws(seed, "level", venue, symbol, side, second, level)
        price = mid * (1.0 + direction * offset_bps / 10_000.0)
        notional = TOP_LEVEL_NOTIONAL * (1 + level) ** 1.5 * (0.6 + 0.8 * size_u)
        levels.append((Decimal(repr(price)).quantize(tick, rounding=rounding), _amount(notional, mid)))
        offset_bps += _between(LEVEL_GAP_BPS, gap_u)
    return tuple(levels)


def simulated_book(seed: int, venue: str, symbol: str, t_ms: int, depth: int = 10) -> Quote:
    """The venue's book for `symbol` at `t_ms` with `depth` levels a side (1..MAX_LEVELS).

    Bids fall and asks rise strictly from the best level, the best bid is below the best ask,
    every price and amount is positive. `seq` is 0 (the collector numbers the stream) and both
    timestamps are `t_ms`.
    """
    levels = min(max(depth, 1), MAX_LEVELS)
    mid = venue_mid(seed, venue, symbol, t_ms)
    return Quote(
        venue=venue,
        symbol=symbol,
        bids=_side(seed, venue, symbol, t_ms, mid, levels, "bid"),
        asks=_side(seed, venue, symbol, t_ms, mid, levels, "ask"),
        received_ts=t_ms,
        seq=0,
        venue_ts=t_ms,
    )


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SimulatedGateway(QuotesOnly):
    """A venue that only quotes: books from `simulated_book` at the clock's current millisecond.

    Orders are refused with VenueError: on paper, fills go through the paper gateway, which takes
    its books from this one.
    """

    orders_refusal = "a simulated venue only quotes: paper trading fills through the paper gateway"

    def __init__(self, name: str, seed: int, clock: Callable[[], int] | None = None) -> None:
        self.name = name
        self.seed = seed
        self._clock = clock or wall_clock_ms

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        return simulated_book(self.seed, self.name, symbol, self._clock(), depth)

    async def close(self) -> None:
        """Nothing to release: no connection is ever opened."""
