"""The paper gateway: real (or simulated) books, fills through the core's one fill model.

It places nothing anywhere. An order fills immediately-or-cancels against what is left of the
venue's latest book (what other orders have not already taken from that snapshot, plus what its
own opportunity reserved), up to its limit price, exactly as the backtest would fill it. The
paper venue keeps every order it filled in Redis, with what it took from the book, in one
transaction: a worker that dies after the fill finds the order again instead of filling it twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis
from redis.client import Pipeline

from trading import book_claims
from trading.core import liquidity
from trading.core.fills import average_price, fees_paid, fill, filled_amount, notional
from trading.core.ledger import Charge
from trading.core.liquidity import Claim
from trading.core.types import ZERO, Fill, MarketRules, Quote, Side, split_symbol
from trading.pubsub import names
from trading.venues.base import OrderNotFound, OrderRequest, OrderResult

KEEP_ORDERS_SECONDS = 7 * 24 * 3600


class PaperGateway:
    """Fills orders for one venue against `book_for(symbol)`, the venue's latest known book, and
    keeps them in `client`'s Redis."""

    capabilities = frozenset({"books", "orders"})

    def __init__(
        self,
        name: str,
        taker_fee: Decimal,
        book_for: Callable[[str], Quote],
        client: redis.Redis,
        rules: MarketRules | None = None,
    ) -> None:
        self.name = name
        self._taker_fee = taker_fee
        self._book_for = book_for
        self._client = client
        self._rules = rules or MarketRules()

    def _order_key(self, client_order_id: str) -> str:
        return f"{names().prefix}paper:{self.name}:{client_order_id}"

    async def fetch_order_book(self, symbol: str, depth: int) -> Quote:
        return self._book_for(symbol)

    async def create_order(self, request: OrderRequest) -> OrderResult:
        """Fill `request` at once as far as what is left of the book and its limit allow; cancel
        the rest (IOC). Placing the same client order id twice returns the first result: nothing
        fills twice."""
        book = self._book_for(request.symbol)
        order_key = self._order_key(request.client_order_id)

        def fill_once(pipe: Pipeline, claims: list[book_claims.Claims]) -> OrderResult:
            known = pipe.get(order_key)
            if known is not None:
                return _loads(known)
            mine = claims[0].get(request.claimant)
            left = liquidity.book_less(book, liquidity.others(claims[0], request.claimant))
            result = self._fill(request, book, left)
            took = liquidity.taking(request.side, result.fills)
            filled = dict(mine.filled) if mine else {}
            for level, amount in took.items():
                filled[level] = filled.get(level, ZERO) + amount
            pipe.multi()
            book_claims.set_claim(pipe, book, request.claimant, mine, Claim(filled=filled))
            pipe.set(order_key, _dumps(result), ex=KEEP_ORDERS_SECONDS)
            return result

        return book_claims.transact(self._client, [book], fill_once, also_watch=[order_key])

    def _fill(self, request: OrderRequest, book: Quote, left: Quote | None) -> OrderResult:
        levels = () if left is None else (left.asks if request.side is Side.BUY else left.bids)
        fills = fill(levels, request.side, request.amount, self._taker_fee, limit=request.price)
        filled = filled_amount(fills)
        _, quote = split_symbol(request.symbol)
        return OrderResult(
            client_order_id=request.client_order_id,
            venue_order_id=f"paper-{request.client_order_id}",
            status=_status(filled, request.amount),
            amount=request.amount,
            filled=filled,
            average_price=average_price(fills) if fills else None,
            cost=notional(fills),
            charges=(Charge(quote, fees_paid(fills)),) if fills else (),
            fills=tuple(fills),
            raw={
                "paper": True,
                "book_seq": book.seq,
                "side": request.side.value,
                "fills": [[str(f.price), str(f.amount)] for f in fills],
            },
        )

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult:
        """The order placed under `client_order_id` on this paper venue. Raises OrderNotFound for
        any other: a paper order recorded by a worker that died before it was filled has not
        filled, and is placed now."""
        raw = self._client.get(self._order_key(client_order_id))
        if raw is None:
            raise OrderNotFound(f"{self.name}: no paper order {client_order_id}")
        return _loads(raw)

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderResult:
        # Paper orders are immediate-or-cancel: by the time anyone asks, they are done.
        return await self.fetch_order(client_order_id, symbol)

    async def fetch_balance(self) -> dict[str, Decimal]:
        """Nothing beyond the ledger: the database is the paper venue's ledger."""
        return {}

    async def market_rules(self, symbol: str) -> MarketRules:
        return self._rules

    async def taker_fee(self, symbol: str) -> Decimal:
        return self._taker_fee

    async def close(self) -> None:
        return None


def _status(filled: Decimal, amount: Decimal) -> str:
    if filled <= ZERO:
        return "canceled"
    return "filled" if filled >= amount else "partial"


def _dumps(result: OrderResult) -> str:
    return json.dumps(
        {
            "client_order_id": result.client_order_id,
            "venue_order_id": result.venue_order_id,
            "status": result.status,
            "amount": str(result.amount),
            "filled": str(result.filled),
            "average_price": None if result.average_price is None else str(result.average_price),
            "cost": str(result.notional),
            "charges": [[charge.asset, str(charge.amount)] for charge in result.charges],
            "fills": [[str(f.price), str(f.amount), str(f.fee)] for f in result.fills],
            "raw": result.raw,
        }
    )


def _loads(raw: bytes | str) -> OrderResult:
    data: dict[str, Any] = json.loads(raw)
    fills = tuple(Fill(Decimal(p), Decimal(a), Decimal(f)) for p, a, f in data["fills"])
    average = data["average_price"]
    return OrderResult(
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        status=data["status"],
        amount=Decimal(data["amount"]),
        filled=Decimal(data["filled"]),
        average_price=None if average is None else Decimal(average),
        cost=Decimal(data["cost"]),
        charges=tuple(Charge(asset, Decimal(amount)) for asset, amount in data["charges"]),
        fills=fills,
        raw=data["raw"],
    )
