"""Value types shared by every part of the system. Money and quantities are Decimal."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache

# A book level: (price, amount). Plain tuples keep the hot path cheap.
Level = tuple[Decimal, Decimal]

ZERO = Decimal(0)
BPS = Decimal(10_000)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Quote:
    """One venue's order book for one symbol at one moment.

    `bids` are best (highest) first, `asks` best (lowest) first. Timestamps are epoch milliseconds;
    `venue_ts` is the venue's own stamp when it gives one. `seq` numbers the venue's stream for the
    symbol so that a subscriber can count what it missed.
    """

    venue: str
    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    received_ts: int
    seq: int
    venue_ts: int | None = None

    @property
    def best_bid(self) -> Decimal:
        return self.bids[0][0]

    @property
    def best_ask(self) -> Decimal:
        return self.asks[0][0]

    @property
    def timestamp(self) -> int:
        """The moment the book describes: the venue's stamp, else when we received it."""
        return self.venue_ts if self.venue_ts is not None else self.received_ts

    def age_ms(self, now_ms: int) -> int:
        return now_ms - self.timestamp


@dataclass(frozen=True, slots=True)
class StaleMark:
    """`venue`'s `symbol` book is no longer to be trusted, as of `at_ms` (epoch ms): its stream
    broke (`kind` says how: trading.core.streams.StreamEvent). Nothing is decided on the book
    withdrawn; the venue's next book replaces it."""

    venue: str
    symbol: str
    kind: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Fees:
    """Fee rates as fractions of notional (0.001 is 10 bps)."""

    taker: Decimal
    maker: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class MarketRules:
    """A venue's trading precision: amounts are multiples of `amount_step`, prices of `price_tick`
    (None when the venue did not say)."""

    amount_step: Decimal = Decimal("0.00001")
    min_amount: Decimal = ZERO
    min_cost: Decimal = ZERO
    price_tick: Decimal | None = None


@dataclass(frozen=True, slots=True)
class VenueState:
    """What the strategy knows of a venue: fees, rules, health, limits and free balances."""

    name: str
    fees: Fees
    rules: MarketRules = MarketRules()
    up: bool = True
    max_quote_age_ms: int = 5_000
    max_notional: Decimal | None = None
    balances: dict[str, Decimal] = field(default_factory=dict)
    tradeable: bool = True  # False: a price reference only, never a leg (no order API or no keys)

    def free(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO)


@dataclass(frozen=True, slots=True)
class StrategyParams:
    """The active strategy's knobs, as the pure core sees them."""

    symbols: tuple[str, ...]
    min_profit_bps: Decimal
    trade_size: Decimal
    max_quote_age_ms: int = 5_000
    ttl_ms: int = 3_000
    slippage_bps: Decimal = ZERO  # how far past the book a leg's guard price may reach
    max_book_skew_ms: int = 1_500  # how far apart in time the two books of a decision may be


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution against one book level; `fee` is in the quote currency."""

    price: Decimal
    amount: Decimal
    fee: Decimal

    @property
    def notional(self) -> Decimal:
        return self.price * self.amount


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of an arbitrage: buy on the cheap venue or sell on the dear one."""

    venue: str
    side: Side
    amount: Decimal
    price: Decimal  # expected volume-weighted average price
    worst_price: Decimal  # the price guard: the last level the amount reaches, plus the slippage allowance
    fee: Decimal


@dataclass(frozen=True, slots=True)
class SizedTrade:
    """A sized cross-venue gap: buy `amount` on `buy.venue`, sell it on `sell.venue`.

    `net_profit` is what it makes filled as the books stand; `worst_net` what it makes if both
    legs fill at their guard prices, the least an accepted trade can make with both legs filled.
    """

    symbol: str
    buy: Leg
    sell: Leg
    gross_profit: Decimal
    net_profit: Decimal
    net_bps: Decimal
    worst_net: Decimal = ZERO

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.symbol, self.buy.venue, self.sell.venue)


@dataclass(frozen=True, slots=True)
class Decision:
    """The strategy's verdict on one venue pair whose books cross: accepted, or rejected with why.
    `sized` is the trade as sized: on an accepted decision, and on one rejected for its profit."""

    symbol: str
    buy_venue: str
    sell_venue: str
    accepted: bool
    reason: str
    sized: SizedTrade | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.symbol, self.buy_venue, self.sell_venue)


@lru_cache(maxsize=1024)  # the ledger splits the symbol of every order: a handful of symbols
def split_symbol(symbol: str) -> tuple[str, str]:
    """'BTC/USDT' -> ('BTC', 'USDT'). Raises ValueError on anything else."""
    base, sep, quote = symbol.partition("/")
    if not sep or not base or not quote or "/" in quote:
        raise ValueError(f"symbol must look like BASE/QUOTE, got {symbol!r}")
    return base, quote
