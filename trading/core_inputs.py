"""Database rows as the pure core's inputs: the active strategy, its params, and venues' rules and states."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal

from trading.core.types import Fees, MarketRules, StrategyParams, VenueState
from trading.models import Balance, StrategyConfig, Venue


class NoActiveStrategy(LookupError):
    """No StrategyConfig is marked active: nothing may trade until one is."""


def active_strategy() -> StrategyConfig:
    config = StrategyConfig.objects.filter(active=True).first()
    if config is None:
        raise NoActiveStrategy("no active StrategyConfig; activate one in the admin")
    return config


def strategy_params(config: StrategyConfig) -> StrategyParams:
    return StrategyParams(
        symbols=tuple(config.symbols),
        min_profit_bps=Decimal(config.min_profit_bps),
        trade_size=Decimal(config.trade_size),
        max_quote_age_ms=config.max_quote_age_ms,
        ttl_ms=config.ttl_ms,
        slippage_bps=Decimal(config.slippage_bps),
        max_book_skew_ms=config.max_book_skew_ms,
    )


def _notional_limit(venue: Venue, config: StrategyConfig) -> Decimal | None:
    limits = [venue.max_notional] if venue.max_notional is not None else []
    if venue.name in config.venue_limits:
        limits.append(Decimal(str(config.venue_limits[venue.name])))
    return min(limits) if limits else None


def market_rules(venue: Venue) -> MarketRules:
    """The venue's precision and minimums as recorded (kept current from the venue in live
    trading)."""
    return MarketRules(
        amount_step=venue.amount_step,
        min_amount=venue.min_amount,
        min_cost=venue.min_cost,
        price_tick=venue.price_tick,
    )


def venue_state(
    venue: Venue, config: StrategyConfig, balances: dict[str, Decimal], tradeable: bool = True
) -> VenueState:
    return VenueState(
        name=venue.name,
        fees=Fees(taker=venue.taker_fee, maker=venue.maker_fee),
        rules=market_rules(venue),
        up=venue.status == Venue.Status.UP,
        max_quote_age_ms=venue.max_quote_age_ms,
        max_notional=_notional_limit(venue, config),
        balances=balances,
        tradeable=tradeable,
    )


def load_venue_states(
    config: StrategyConfig, tradeable: Callable[[Venue], bool], names: tuple[str, ...] | None = None
) -> dict[str, VenueState]:
    """Every enabled venue (or only those named) with its free balances as the ledger has them,
    keyed by venue name; `tradeable` says which of them can be a leg."""
    venues = Venue.objects.filter(enabled=True)
    if names is not None:
        venues = venues.filter(name__in=names)
    loaded = list(venues)
    free: dict[int, dict[str, Decimal]] = defaultdict(dict)
    for balance in Balance.objects.filter(venue__in=loaded):
        free[balance.venue_id][balance.asset] = balance.free
    return {v.name: venue_state(v, config, free[v.pk], tradeable(v)) for v in loaded}
