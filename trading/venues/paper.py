"""The paper gateway: real (or simulated) books, fills through the core's one fill model.

It places nothing anywhere. An order fills immediately-or-cancels against the venue's latest book,
up to its limit price, exactly as the backtest would fill it.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from trading.core.fills import average_price, fees_paid, fill, filled_amount
from trading.core.types import ZERO, Quote, Side
from trading.venues.base import OrderNotFound, OrderRequest, OrderResult


class PaperGateway:
    """Fills orders for one venue against `book_for(symbol)`, the venue's latest known book."""

    capabilities = frozenset({"books", "orders"})

    def __init__(
        self,
        name: str,
        taker_fee: Decimal,
        book_for: Callable[[str], Quote],
        balances: dict[str, Decimal] | None = None,
    ) -> None:
        self.name = name
        self._taker_fee = taker_fee
        self._book_for = book_for
        self._balances = dict(balances or {})
        self._orders: dict[str, OrderResult] = {}

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        return self._book_for(symbol)

    async def create_order(self, request: OrderRequest) -> OrderResult:
        """Fill `request` at once as far as the book and its limit allow; cancel the rest (IOC).

        Placing the same client order id twice returns the first result: nothing fills twice.
        """
        if request.client_order_id in self._orders:
            return self._orders[request.client_order_id]
        book = self._book_for(request.symbol)
        levels = book.asks if request.side is Side.BUY else book.bids
        fills = fill(levels, request.side, request.amount, self._taker_fee, limit=request.price)
        filled = filled_amount(fills)
        result = OrderResult(
            client_order_id=request.client_order_id,
            venue_order_id=f"paper-{request.client_order_id}",
            status=_status(filled, request.amount),
            amount=request.amount,
            filled=filled,
            average_price=average_price(fills) if fills else None,
            fee=fees_paid(fills),
            fills=tuple(fills),
            raw={
                "paper": True,
                "book_seq": book.seq,
                "fills": [[str(f.price), str(f.amount), str(f.fee)] for f in fills],
            },
        )
        self._orders[request.client_order_id] = result
        return result

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult:
        """The order placed under `client_order_id` through this gateway. Raises OrderNotFound
        for any other: a paper order exists nowhere else, so one recorded by a worker that died
        before its answer was kept has not filled, and is placed now."""
        try:
            return self._orders[client_order_id]
        except KeyError:
            raise OrderNotFound(f"{self.name}: no paper order {client_order_id}") from None

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderResult:
        # Paper orders are immediate-or-cancel: by the time anyone asks, they are done.
        return await self.fetch_order(client_order_id, symbol)

    async def fetch_balance(self) -> dict[str, Decimal]:
        """The ledger balances this gateway was opened with (the database is the paper ledger)."""
        return dict(self._balances)

    async def close(self) -> None:
        return None


def _status(filled: Decimal, amount: Decimal) -> str:
    if filled <= ZERO:
        return "canceled"
    return "filled" if filled >= amount else "partial"
