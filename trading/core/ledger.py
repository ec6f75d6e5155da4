"""The one ledger: what holding funds for an order, a venue's execution of it and giving funds back
do to balances, and what an opportunity's executions did to holdings as a whole.

Live and paper settlement apply these movements to the database, the backtest to its own balances;
none of them computes a balance change any other way. A venue charges a fee in whatever asset it
charges it in (the quote currency, the base asset an order received, or a third asset such as
BNB), and the ledger debits exactly that asset: it credits what the venue credits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from trading.core.types import ZERO, Side, split_symbol


@dataclass(frozen=True, slots=True)
class Movement:
    """A change to one venue's balance of one asset: to what is free and to what is held back."""

    venue: str
    asset: str
    free: Decimal = ZERO
    locked: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Charge:
    """A fee as the venue charged it: `amount` of `asset`."""

    asset: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Execution:
    """What an order did on its venue: `filled` base for `cost` quote (the fills' notional), and
    the fees charged, each in its own asset."""

    venue: str
    symbol: str
    side: Side
    filled: Decimal
    cost: Decimal
    charges: tuple[Charge, ...] = ()


def held_asset(symbol: str, side: Side) -> str:
    """The asset an order spends: quote for a buy, base for a sale."""
    base, quote = split_symbol(symbol)
    return quote if side is Side.BUY else base


def hold_amount(side: Side, amount: Decimal, limit: Decimal, fee_rate: Decimal) -> Decimal:
    """What an order must hold back to be paid for however it fills: a buy its amount at the limit
    with the taker fee, a sale its amount."""
    return amount * limit * (1 + fee_rate) if side is Side.BUY else amount


def hold(venue: str, asset: str, amount: Decimal) -> Movement:
    """Set `amount` of `asset` aside for an order: free to locked."""
    return Movement(venue, asset, free=-amount, locked=amount)


def release(venue: str, asset: str, amount: Decimal) -> Movement:
    """Give back what `hold` set aside: locked to free."""
    return Movement(venue, asset, free=amount, locked=-amount)


def executed(execution: Execution) -> list[Movement]:
    """The free balance changes of an execution: base in and quote out for a buy (the other way
    for a sale), and each fee out of the asset it was charged in."""
    base, quote = split_symbol(execution.symbol)
    sign = 1 if execution.side is Side.BUY else -1
    changes = [(base, sign * execution.filled), (quote, -sign * execution.cost)]
    changes += [(charge.asset, -charge.amount) for charge in execution.charges]
    return [Movement(execution.venue, asset, free=amount) for asset, amount in changes if amount]


def flows(executions: Iterable[Execution]) -> dict[str, Decimal]:
    """The change in holdings, per asset and across venues, that `executions` made: an
    opportunity's cash flow. Assets that net to zero are kept (a matched trade's base is 0)."""
    net: defaultdict[str, Decimal] = defaultdict(lambda: ZERO)
    for execution in executions:
        for movement in executed(execution):
            net[movement.asset] += movement.free
        base, quote = split_symbol(execution.symbol)
        net[base] += ZERO
        net[quote] += ZERO
    return dict(net)


@dataclass(frozen=True, slots=True)
class Valuation:
    """Holdings changes valued in one currency: `pnl`, and the assets that had no price (left
    out of `pnl`, never counted as zero silently: the caller alerts on them)."""

    pnl: Decimal
    unvalued: tuple[str, ...] = ()


def value(changes: Mapping[str, Decimal], prices: Mapping[str, Decimal | None], currency: str) -> Valuation:
    """`changes` (asset to amount) valued in `currency`, each asset at `prices[asset]` (units of
    `currency` per unit of it); `currency` itself is worth 1. Assets without a price are left out
    and named."""
    pnl, unvalued = ZERO, []
    for asset, amount in sorted(changes.items()):
        price = Decimal(1) if asset == currency else prices.get(asset)
        if price is None:
            if amount:
                unvalued.append(asset)
            continue
        pnl += amount * price
    return Valuation(pnl, tuple(unvalued))


def mid(bid: Decimal, ask: Decimal) -> Decimal:
    return (bid + ask) / 2
