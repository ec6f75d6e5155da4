"""What a fill costs in fees, and in which asset, as each venue charges it. Dialect-free: a
dialect only words the outcome.

An account, or one order, pays its fees one of these ways (`Fees.asset`):

- QUOTE: every fee in the quote currency, on buys and sells alike. Kraken's default (its
  `fee` on orders and trades is "total fee (quote currency)", `oflags=fciq`), and the emulator's
  default so that callers that never chose keep their figures.
- BASE: every fee in the base currency: Kraken's `oflags=fcib`, "prefer fee in base currency".
- RECEIVED: taken from the asset the order receives, the base on a buy and the quote on a sell,
  as Binance spot charges commission ("the received amount is multiplied with the sum of the
  rates", Binance spot commission FAQ).
- any other asset code, e.g. "BNB": Binance with "pay fees with BNB" on. The commission is
  valued in that asset at a price the emulator was told, reduced by its discount, and debited
  from the account's balance of it; when that balance cannot cover it, the full commission is
  taken from the received asset instead, as Binance does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the venue imports this module; only the type flows back
    from devtools.emulator.venue import Market

ZERO = Decimal(0)
QUOTE = "quote"
BASE = "base"
RECEIVED = "received"
MODES = frozenset({QUOTE, BASE, RECEIVED})


@dataclass(frozen=True)
class FeePrice:
    """One unit of a fee asset valued in a quote currency, and the share of the standard
    commission the venue waives when it is paid in that asset (Binance: 0.25 for BNB)."""

    price: Decimal
    discount: Decimal = ZERO


@dataclass(frozen=True)
class Fees:
    """How an order pays: `rate` of the notional, charged as `asset` says (a mode above or an
    asset code), valued with `prices` (keyed by pair, e.g. "BNB/USDT") when paid in a third
    asset."""

    rate: Decimal
    asset: str = QUOTE
    prices: Mapping[str, FeePrice] = field(default_factory=dict)


@dataclass(frozen=True)
class Charge:
    asset: str
    amount: Decimal


def valid_asset(asset: str) -> bool:
    """A mode, or an asset code such as "BNB"."""
    return asset in MODES or (asset.isalnum() and asset.isupper())


def missing_price(fees: Fees, market: Market) -> str | None:
    """The pair whose price fees in a third asset need on `market` and the emulator lacks."""
    if fees.asset in MODES:
        return None
    pair = f"{fees.asset}/{market.quote}"
    return None if pair in fees.prices else pair


def charge(
    fees: Fees, balances: Mapping[str, Decimal], market: Market, side: str, price: Decimal, size: Decimal
) -> Charge:
    """The fee on one execution of `size` at `price`, for an account holding `balances`."""
    if fees.asset == QUOTE:
        return Charge(market.quote, price * size * fees.rate)
    if fees.asset == BASE:
        return Charge(market.base, size * fees.rate)
    received = _received(fees.rate, market, side, price, size)
    valued = fees.prices.get(f"{fees.asset}/{market.quote}")
    if fees.asset == RECEIVED or valued is None:
        return received
    amount = price * size * fees.rate * (1 - valued.discount) / valued.price
    if balances.get(fees.asset, ZERO) < amount:
        return received
    return Charge(fees.asset, amount)


def usual_asset(asset: str, market: Market, side: str) -> str:
    """The asset an order's fees are charged in when nothing forces a fallback."""
    if asset == QUOTE:
        return market.quote
    if asset == BASE:
        return market.base
    if asset == RECEIVED:
        return market.base if side == "buy" else market.quote
    return asset


def _received(rate: Decimal, market: Market, side: str, price: Decimal, size: Decimal) -> Charge:
    if side == "buy":
        return Charge(market.base, size * rate)
    return Charge(market.quote, price * size * rate)
