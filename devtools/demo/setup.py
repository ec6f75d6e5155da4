"""Idempotent demo data: simulated venues, paper balances, an active strategy and an admin user.

Running it again changes nothing that is already there, so venues and strategies edited in the
admin, and balances moved by paper trades, survive a restart of the demo.

The live demo trades instead on the local exchange emulator's Binance and Kraken (ccxt venues
pointed at it): those are enabled, funded as the emulator funds the run's fresh accounts, and
the simulated venues are disabled; the paper demo does the reverse.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max

from trading.models import Balance, StrategyConfig, Venue


@dataclass(frozen=True)
class DemoVenue:
    name: str
    taker_fee: Decimal
    maker_fee: Decimal


DEMO_VENUES = (
    DemoVenue("sim-alpha", Decimal("0.0005"), Decimal("0.0002")),
    DemoVenue("sim-bravo", Decimal("0.00075"), Decimal("0.0004")),
    DemoVenue("sim-charlie", Decimal("0.001"), Decimal("0.0008")),
    DemoVenue("sim-delta", Decimal("0.0006"), Decimal("0.0003")),
)
SIMULATED_NAMES = [spec.name for spec in DEMO_VENUES]
DEMO_BALANCES = {"BTC": Decimal(1), "USDT": Decimal(30_000)}
DEMO_SYMBOLS = ["BTC/USDT"]
# The emulator's dialects the live demo trades on, named as ccxt names them; their taker fee is
# the emulator's (and is read from it again before every trade).
LIVE_VENUES = ("binance", "kraken")
EMULATOR_TAKER_FEE = Decimal("0.001")


@dataclass(frozen=True)
class DemoSetup:
    venues: list[Venue]
    strategy: StrategyConfig
    admin_user: str
    admin_password: str | None  # set by this run; None when an existing password was kept


def ensure_venues() -> list[Venue]:
    venues = []
    for spec in DEMO_VENUES:
        venue, _ = Venue.objects.get_or_create(
            name=spec.name,
            defaults={
                "kind": Venue.Kind.SIMULATED,
                "taker_fee": spec.taker_fee,
                "maker_fee": spec.maker_fee,
                "min_amount": Decimal("0.0001"),
                "min_cost": Decimal(10),
            },
        )
        venues.append(venue)
    return venues


def ensure_live_venues(api_root: str, stream_root: str | None = None) -> list[Venue]:
    """The emulator's venues at `api_root`, enabled and funded as the emulator funds this run's
    accounts (the emulator keeps nothing between runs), streaming from `stream_root` when given
    (polled while their streams are down), polled otherwise; the simulated demo venues are
    disabled."""
    venues = []
    for name in LIVE_VENUES:
        streams = {"feed": Venue.Feed.STREAM, "stream_url": f"{stream_root}/{name}"} if stream_root else {}
        venue, _ = Venue.objects.update_or_create(
            name=name,
            defaults={
                "kind": Venue.Kind.CCXT,
                "ccxt_id": name,
                "api_url": f"{api_root}/{name}",
                "enabled": True,
                "feed": Venue.Feed.POLL,
                "stream_url": "",
                **streams,
            },
            create_defaults={
                "kind": Venue.Kind.CCXT,
                "ccxt_id": name,
                "api_url": f"{api_root}/{name}",
                **streams,
                "taker_fee": EMULATOR_TAKER_FEE,
                "maker_fee": EMULATOR_TAKER_FEE,
            },
        )
        for asset, amount in DEMO_BALANCES.items():
            Balance.objects.update_or_create(venue=venue, asset=asset, defaults={"free": amount, "locked": 0})
        venues.append(venue)
    Venue.objects.filter(name__in=SIMULATED_NAMES).update(enabled=False)
    return venues


def retire_live_venues() -> None:
    """Disable the emulator venues a live demo left enabled, and enable again the simulated
    venues it disabled, so the paper demo trades its own."""
    emulated = Venue.objects.filter(
        name__in=LIVE_VENUES, kind=Venue.Kind.CCXT, api_url__startswith="http://127.0.0.1:", enabled=True
    )
    if emulated.update(enabled=False):
        Venue.objects.filter(name__in=SIMULATED_NAMES).update(enabled=True)


def ensure_balances(venues: list[Venue]) -> None:
    """Fund each venue once; later runs keep whatever paper trading left there."""
    for venue in venues:
        for asset, amount in DEMO_BALANCES.items():
            Balance.objects.get_or_create(venue=venue, asset=asset, defaults={"free": amount})


def ensure_strategy() -> StrategyConfig:
    """The active strategy, creating the default one only when none is active."""
    active = StrategyConfig.objects.filter(active=True).first()
    if active is not None:
        return active
    latest = StrategyConfig.objects.aggregate(latest=Max("version"))["latest"] or 0
    return StrategyConfig.objects.create(
        version=latest + 1,
        active=True,
        symbols=DEMO_SYMBOLS,
        min_profit_bps=Decimal(5),
        trade_size=Decimal("0.05"),
        slippage_bps=Decimal(3),
        max_quote_age_ms=5_000,
        ttl_ms=3_000,
        note="demo default",
    )


def ensure_admin(username: str, password: str | None) -> str | None:
    """Make `username` a superuser that can log in with `password`.

    Without a password, a new user gets a generated one and an existing user keeps theirs.
    Returns the password this call set, or None when it left the existing one alone.
    """
    users = get_user_model()
    user = users.objects.filter(username=username).first()
    if user is None:
        password = password or secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
        return password
    if password is None:
        return None
    if not (user.check_password(password) and user.is_superuser and user.is_staff):
        user.set_password(password)
        user.is_superuser = user.is_staff = user.is_active = True
        user.save()
    return password


@transaction.atomic
def setup_demo(
    admin_user: str,
    admin_password: str | None,
    emulator_root: str | None = None,
    stream_root: str | None = None,
) -> DemoSetup:
    """The demo's data, on paper with the simulated venues, or live on the emulator venues at
    `emulator_root` when given (streaming from its websocket root `stream_root`, when given)."""
    if emulator_root is None:
        venues = ensure_venues()
        ensure_balances(venues)
        retire_live_venues()
    else:
        venues = ensure_live_venues(emulator_root, stream_root)
    strategy = ensure_strategy()
    password = ensure_admin(admin_user, admin_password)
    return DemoSetup(venues, strategy, admin_user, password)
