"""What a replay records: the opportunities it saw, the trades it took, and its Result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from trading.core.gaps import GapState
from trading.core.policy import Outcome, Placed, Send
from trading.core.strategy import Reason
from trading.core.types import ZERO, Side


@dataclass
class SeenOpportunity:
    """One opportunity as the listener would have recorded it.

    A crossing rejected past the profit bar (for balance, size or a limit) that later becomes
    tradeable gets a new, accepted record, as in the listener; to a trader it is one opportunity.
    The rejected record is then `superseded`, and the accepted one's `since_ms` is when the
    rejected one was first seen.
    """

    buy_venue: str
    sell_venue: str
    accepted: bool
    reason: str
    first_ms: int
    last_ms: int
    amount: Decimal | None
    expected_net: Decimal | None
    ticks: int = 1
    trade: SimTrade | None = field(default=None, repr=False, compare=False)  # when it was taken
    since_ms: int | None = None
    superseded: bool = False

    @property
    def state(self) -> GapState:
        """Rejected; in flight while its trade has a leg on the way; else settled, and re-armed:
        a newer book that still clears the bar trades the crossing again."""
        if not self.accepted:
            return GapState.REJECTED
        if self.trade is not None and self.trade.legs_open > 0:
            return GapState.IN_FLIGHT
        return GapState.REARMED

    @property
    def lifetime_ms(self) -> int:
        """From the opportunity's first sighting (its rejected record's, when it took one over)
        to its last."""
        return self.last_ms - (self.first_ms if self.since_ms is None else self.since_ms)

    @property
    def fleeting(self) -> bool:
        """Seen at one moment only: gone by the next book of its venues, so how long it lasted
        is not measured (its lifetime of 0 ms is no duration)."""
        return self.lifetime_ms == 0

    def take_over(self, rejected: SeenOpportunity) -> None:
        """Continue `rejected`, the record of this crossing that this accepted one replaces, if
        it was rejected past the profit bar: the same opportunity, now tradeable."""
        if not rejected.accepted and rejected.reason != Reason.BELOW_MIN_PROFIT:
            rejected.superseded = True
            self.since_ms = rejected.first_ms


@dataclass
class SimTrade:
    """One taken opportunity: its orders (both legs, then any retries and hedges) as they filled,
    their totals, and the policy's outcome once it is done."""

    decided_ms: int
    buy_venue: str
    sell_venue: str
    amount: Decimal
    buy_price: Decimal  # expected at the decision
    sell_price: Decimal
    expected_net: Decimal
    bought: Decimal = ZERO  # every buy of the trade: legs, retries and hedges
    cost: Decimal = ZERO
    buy_fee: Decimal = ZERO
    sold: Decimal = ZERO
    proceeds: Decimal = ZERO
    sell_fee: Decimal = ZERO
    settled_ms: int = 0
    legs_open: int = 2  # orders on their way
    claimant: str = ""  # whose claims on book snapshots are the trade's
    orders: list[Placed] = field(default_factory=list, repr=False)
    outcome: Outcome | None = None
    mark: Decimal | None = None  # what a position left open is worth a unit, at the run's end

    def landed(self, send: Send, amount: Decimal, value: Decimal, fee: Decimal) -> None:
        """Count an order of the trade that landed: `amount` filled for `value`, paying `fee`."""
        if send.side is Side.BUY:
            self.bought, self.cost, self.buy_fee = self.bought + amount, self.cost + value, self.buy_fee + fee
        else:
            self.sold, self.proceeds, self.sell_fee = (
                self.sold + amount,
                self.proceeds + value,
                self.sell_fee + fee,
            )
        self.orders.append(
            Placed(send.role, send.attempt, send.venue, send.side, send.amount, send.limit, amount, value)
        )
        self.legs_open -= 1

    @property
    def filled(self) -> bool:
        """Both legs filled in full (retries included)."""
        return self.outcome is Outcome.MATCHED

    @property
    def fees(self) -> Decimal:
        return self.buy_fee + self.sell_fee

    @property
    def unhedged(self) -> Decimal:
        """Base bought but not sold (negative: sold but not bought): a leg that missed."""
        return self.bought - self.sold

    @property
    def gross_pnl(self) -> Decimal:
        """Sale proceeds less purchase cost, with any base left one-sided valued at its venue's
        market when the run ended."""
        if not self.unhedged:
            return self.proceeds - self.cost
        mark = self.mark if self.mark is not None else (self.buy_price + self.sell_price) / 2
        return self.proceeds - self.cost + self.unhedged * mark

    @property
    def net_pnl(self) -> Decimal:
        return self.gross_pnl - self.fees


@dataclass
class Result:
    """Everything a replay produced, in the order it happened."""

    symbol: str
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    trades: list[SimTrade] = field(default_factory=list)
    opportunities: list[SeenOpportunity] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    crossings: int = 0  # books crossing before fees, each counted once while it lasts
    balances: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    inventory: list[tuple[int, dict[str, Decimal]]] = field(default_factory=list)  # base per venue
    gap_minutes: list[npt.NDArray[np.int64]] = field(default_factory=list)
    gap_widest: list[npt.NDArray[np.float64]] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return len(self.trades)
