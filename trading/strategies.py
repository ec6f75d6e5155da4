"""Strategy versions: activating one, and creating a new active one from tuned parameters.

Exactly one StrategyConfig is active. A change is announced on control.strategy after its
transaction commits, so running listeners reload the version that is really in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis
from django.db import transaction
from django.db.models import Max

from trading import pubsub
from trading.models import StrategyConfig

log = logging.getLogger(__name__)

TUNABLE = ("min_profit_bps", "trade_size", "max_quote_age_ms", "ttl_ms", "slippage_bps", "max_book_skew_ms")


def next_version() -> int:
    return (StrategyConfig.objects.aggregate(top=Max("version"))["top"] or 0) + 1


def activate_version(config: StrategyConfig, announced: Callable[[bool], None] | None = None) -> None:
    """Make `config` the one active strategy version, atomically, and announce it on commit;
    `announced`, if given, then learns whether the announcement went out.

    The others are deactivated first: the one_active_strategy constraint is checked per statement.
    """
    with transaction.atomic():
        # Lock every version, so that two activations at once run one after the other.
        list(StrategyConfig.objects.select_for_update().values_list("pk", flat=True))
        StrategyConfig.objects.filter(active=True).exclude(pk=config.pk).update(active=False)
        StrategyConfig.objects.filter(pk=config.pk).update(active=True)
        transaction.on_commit(lambda: (announced or _ignore)(announce_strategy(config.version)))


def _ignore(_sent: bool) -> None:
    """The default for callers that need not know: a failure is already logged."""


def announce_strategy(version: int) -> bool:
    """Publish control.strategy so running listeners reload the active version. Returns False
    (after logging why) when Redis is unreachable: the version is saved all the same."""
    try:
        with pubsub.connect() as client:
            pubsub.publish_event(client, pubsub.names().strategy_control, {"version": version})
    except redis.RedisError:
        log.exception("strategy v%s saved but control.strategy could not be published", version)
        return False
    return True


def promote(parameters: Mapping[str, Any], note: str) -> StrategyConfig:
    """A new active version: the active one (or the defaults) with `parameters` (names from
    TUNABLE) changed. The previous version is kept, inactive, to restore from the admin."""
    unknown = set(parameters) - set(TUNABLE)
    if unknown:
        raise ValueError(f"not strategy parameters: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        current = StrategyConfig.objects.select_for_update().filter(active=True).first()
        config = StrategyConfig(
            symbols=current.symbols if current else [],
            venue_limits=current.venue_limits if current else {},
            note=note[:200],
        )
        for name in TUNABLE:
            setattr(config, name, getattr(current, name) if current else getattr(config, name))
        for name, value in parameters.items():
            setattr(config, name, value)
        config.version = next_version()
        config.save()
        activate_version(config)
    return config
