"""Order records: their client order ids, what they hold back, and how the core reads them.

A client order id is unique for the life of an account: the deployment's key (trading.models.
Deployment), the opportunity and the order's role and attempt, in letters and digits only and at
most 18 characters, which every venue we trade accepts (Kraken's free-text cl_ord_id is the
shortest). Venues enforce uniqueness among open orders only, so an id that ever repeated could
adopt or re-trade another order.
"""

from __future__ import annotations

import string
from decimal import Decimal
from typing import Any

from trading.core.ledger import Charge, Execution, held_asset, hold, hold_amount
from trading.core.ledger import Movement as LedgerMovement
from trading.core.policy import Placed, Role
from trading.core.types import ZERO, Side, split_symbol
from trading.models import Opportunity, Order, Venue

ROLE_LETTERS = {Role.BUY: "b", Role.SELL: "s", Role.HEDGE: "h"}
MAX_ATTEMPT = 9
_DIGITS = string.digits + string.ascii_lowercase


def base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _DIGITS[digit] + digits
        if not number:
            return digits


def client_order_id(deployment: str, opportunity_id: int, role: Role, attempt: int) -> str:
    """`deployment` (6 characters), the role's letter, the attempt digit, then the opportunity's id
    in base 36: "k3x9q2b02n9c". Raises ValueError past attempt 9."""
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt {attempt} is out of 0..{MAX_ATTEMPT}")
    return f"{deployment}{ROLE_LETTERS[role]}{attempt}{base36(opportunity_id)}"


def new(
    opportunity: Opportunity,
    deployment: str,
    *,
    role: Role,
    attempt: int,
    venue: Venue,
    side: Side,
    amount: Decimal,
    limit: Decimal,
) -> tuple[Order, LedgerMovement]:
    """An order not saved yet, holding back its funds (a buy its amount at the limit with the taker
    fee, a sale its amount), and the movement that holds them."""
    held = hold_amount(side, amount, limit, venue.taker_fee)
    order = Order(
        opportunity=opportunity,
        role=role.value,
        attempt=attempt,
        client_order_id=client_order_id(deployment, opportunity.pk, role, attempt),
        venue=venue,
        symbol=opportunity.symbol,
        side=side.value,
        price=limit,
        amount=amount,
        held=held,
    )
    return order, hold(venue.name, held_asset(order.symbol, side), held)


def record(opportunity: Opportunity, deployment: str, **terms: Any) -> tuple[Order, list[LedgerMovement]]:
    """The order `new` describes, saved once (a second call returns the first), and the movement
    holding its funds (none when it was recorded already). Call inside the transaction that
    applies the movement."""
    order, held = new(opportunity, deployment, **terms)
    existing = Order.objects.filter(opportunity=opportunity, role=order.role, attempt=order.attempt).first()
    if existing is not None:
        return existing, []
    order.save()
    return order, [held]


def charges(order: Order) -> tuple[Charge, ...]:
    return tuple(Charge(asset, Decimal(amount)) for asset, amount in order.fees)


def base_fee(order: Order) -> Decimal:
    base, _ = split_symbol(order.symbol)
    return sum((charge.amount for charge in charges(order) if charge.asset == base), ZERO)


def cost(order: Order) -> Decimal:
    """What the order's fills came to, as the venue said (orders recorded before that was kept:
    their filled amount at their average)."""
    return order.cost if order.cost or not order.filled else order.filled * (order.average_price or ZERO)


def placed(order: Order, venue_name: str | None = None) -> Placed:
    """The order as the settlement policy reads it (`venue_name` spares reading its venue)."""
    return Placed(
        role=Role(order.role),
        attempt=order.attempt,
        venue=venue_name or order.venue.name,
        side=Side(order.side),
        amount=order.amount,
        limit=order.price,
        filled=order.filled,
        cost=cost(order),
        base_fee=base_fee(order),
        finished=order.finished,
    )


def execution(order: Order) -> Execution:
    """What the order did on its venue, as the core ledger books it."""
    side = Side(order.side)
    return Execution(order.venue.name, order.symbol, side, order.filled, cost(order), charges(order))


def of(opportunity: Opportunity) -> list[Order]:
    """The opportunity's orders, oldest first, with their venues."""
    return list(opportunity.orders.select_related("venue").order_by("pk"))
