"""The trading mode (TRADING_MODE, paper or live), as each process announces it at start."""

from __future__ import annotations

import logging

from django.conf import settings

from trading.credentials import credential_names, venues_without_keys

log = logging.getLogger(__name__)


def announce_trading_mode() -> str:
    """Say at start which mode new opportunities trade in (TRADING_MODE), and in live mode which
    enabled ccxt venues only quote because their keys are missing (naming the variables, never a
    key). Returns the mode."""
    mode = settings.TRADING_MODE
    missing = venues_without_keys() if mode == "live" else []
    if missing:
        variables = [name for venue in missing for name in credential_names(venue)]
        log.warning(
            "trading mode: LIVE; quote-only for lack of keys: %s (%s)",
            ", ".join(missing),
            ", ".join(variables),
        )
    else:
        log.warning("trading mode: %s", mode.upper())
    return mode
