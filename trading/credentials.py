"""Venue API credentials: where each venue's key and secret live in the environment, and which
enabled venues lack them."""

from __future__ import annotations

import os

from trading.models import Venue


def credential_names(venue: str) -> tuple[str, str]:
    """The environment variables holding `venue`'s API key and secret: ARB_<VENUE>_API_KEY and
    ARB_<VENUE>_API_SECRET, the name upper-cased with dashes as underscores."""
    stem = f"ARB_{venue.upper().replace('-', '_')}"
    return f"{stem}_API_KEY", f"{stem}_API_SECRET"


def credentials(venue: str) -> tuple[str, str] | None:
    """`venue`'s (key, secret) from the environment, or None unless both are set."""
    key, secret = (os.environ.get(name, "") for name in credential_names(venue))
    return (key, secret) if key and secret else None


def venues_without_keys() -> list[str]:
    """Enabled ccxt venues whose keys are missing from the environment."""
    names = Venue.objects.filter(enabled=True, kind=Venue.Kind.CCXT).values_list("name", flat=True)
    return [name for name in names if credentials(name) is None]
