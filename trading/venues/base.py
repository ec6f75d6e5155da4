"""The gateway protocol every venue adapter implements, and the errors they raise.

Adapters translate their library's errors into these at the boundary; nothing above the venue
layer catches a ccxt exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from trading.core.ledger import Charge
from trading.core.types import Fill, MarketRules, Quote, Side


class VenueError(Exception):
    """Anything a venue did wrong."""


class TemporaryVenueError(VenueError):
    """Worth retrying later: timeouts, rate limits (429), server errors (5xx), network trouble."""


class StreamFault(TemporaryVenueError):
    """A venue's stream can no longer be trusted: `kind` (trading.core.streams.StreamEvent) says
    how. Its books are withdrawn and the stream is resynced from a fresh snapshot."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class OrderRejected(VenueError):
    """The venue refused the order; retrying the same order will not help."""


class InsufficientBalance(OrderRejected):
    """The venue (or the paper ledger) lacks the funds for the order."""


class OrderNotFound(VenueError):
    """The venue has no order under that id: it was never placed (or never arrived)."""


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: Side
    amount: Decimal
    price: Decimal  # the limit: never buy above it, never sell below it
    client_order_id: str
    claimant: str = ""  # whose reserved liquidity a paper fill may use (the opportunity)


@dataclass(frozen=True)
class OrderResult:
    """An order as its venue reports it. `charges` are its fees in the assets the venue charged
    them in; `fee_stated` is False when the venue said nothing of the fee of what filled."""

    client_order_id: str
    venue_order_id: str
    status: str  # one of trading.models.Order.Status values
    amount: Decimal
    filled: Decimal
    average_price: Decimal | None
    cost: Decimal | None = None  # the fills' notional, where the venue states it (else filled x average)
    charges: tuple[Charge, ...] = ()
    fee_stated: bool = True
    fills: tuple[Fill, ...] = ()  # the executions, where the venue's answer lists them
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def notional(self) -> Decimal:
        """What the fills came to in the quote currency, as exactly as the venue said it."""
        if self.cost is not None:
            return self.cost
        return self.filled * (self.average_price or Decimal(0))

    @property
    def finished(self) -> bool:
        """The venue is done with it: nothing more will fill."""
        return self.status != "open"


class Gateway(Protocol):
    """One venue. `capabilities` names what it can do: "books", "orders"."""

    name: str
    capabilities: frozenset[str]

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        """The current book; `seq` is 0 (the collector numbers the stream)."""
        ...

    async def create_order(self, request: OrderRequest) -> OrderResult: ...

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult: ...

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderResult: ...

    async def fetch_balance(self) -> dict[str, Decimal]: ...

    async def market_rules(self, symbol: str) -> MarketRules:
        """The venue's precision and minimums for `symbol`."""
        ...

    async def taker_fee(self, symbol: str) -> Decimal:
        """The taker fee rate the account pays on `symbol` (a fraction of notional)."""
        ...

    async def close(self) -> None: ...


class QuotesOnly:
    """For gateways that only quote: every order method refuses with `orders_refusal`."""

    name: str
    capabilities = frozenset({"books"})
    orders_refusal = "this venue only quotes"

    def _refuse(self) -> VenueError:
        return VenueError(f"{self.name}: {self.orders_refusal}")

    async def create_order(self, request: OrderRequest) -> OrderResult:
        raise self._refuse()

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult:
        raise self._refuse()

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderResult:
        raise self._refuse()

    async def fetch_balance(self) -> dict[str, Decimal]:
        raise self._refuse()

    async def market_rules(self, symbol: str) -> MarketRules:
        raise self._refuse()

    async def taker_fee(self, symbol: str) -> Decimal:
        raise self._refuse()
