"""`manage.py run_emulator`: the local exchange emulator for demos and manual tries.

    manage.py run_emulator --port 8600 --venues binance,kraken \
        --account binance:demo-key:demo-secret:BTC=1,USDT=30000

    ARB_BINANCE_API_KEY=... ARB_BINANCE_API_SECRET=... \
        manage.py run_emulator --simulate 7 --fund binance:BTC=1,USDT=30000

Point a venue's api_url at the printed URL; orders from an account's key match against the
emulated books: fixed default books, or with --simulate the simulated market (the same one the
simulated venues show), moving and dislocating, each venue under its own name. --fund opens an
account for the keys the trading processes read from the environment, so no secret goes on a
command line. Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading.config import credential_names, credentials
from trading.emulator import DIALECTS, Emulator, emulate
from trading.emulator.server import Book, BookFeed
from trading.venues.simulated import simulated_book, wall_clock_ms


@dataclass(frozen=True)
class AccountSpec:
    venue: str
    key: str
    secret: str
    balances: dict[str, Decimal]


def parse_venues(text: str) -> tuple[str, ...]:
    """'binance,kraken' -> ('binance', 'kraken'). Raises CommandError for a dialect we lack."""
    venues = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(venues) - set(DIALECTS))
    if unknown or not venues:
        raise CommandError(f"--venues takes names from {sorted(DIALECTS)}, got {text!r}")
    return venues


def parse_balances(text: str) -> dict[str, Decimal]:
    """'BTC=1,USDT=30000' -> {'BTC': Decimal('1'), 'USDT': Decimal('30000')}."""
    balances: dict[str, Decimal] = {}
    for item in filter(None, text.split(",")):
        asset, sep, amount = item.partition("=")
        try:
            balances[asset.strip().upper()] = Decimal(amount)
        except InvalidOperation:
            raise CommandError(f"balance {item!r} is not ASSET=AMOUNT") from None
        if not sep or not asset.strip():
            raise CommandError(f"balance {item!r} is not ASSET=AMOUNT")
    return balances


def parse_account(spec: str, venues: tuple[str, ...]) -> AccountSpec:
    """'venue:key:secret:BTC=1,USDT=30000' as an account. The error never repeats the spec,
    which holds a secret."""
    venue, _, rest = spec.partition(":")
    key, _, rest = rest.partition(":")
    secret, _, funds = rest.rpartition(":")
    if venue not in venues or not key or not secret or not funds:
        raise CommandError(
            f"--account wants VENUE:KEY:SECRET:ASSET=AMOUNT,... with a venue from {list(venues)}"
        )
    return AccountSpec(venue, key, secret, parse_balances(funds))


def parse_funding(spec: str, venues: tuple[str, ...]) -> AccountSpec:
    """'venue:BTC=1,USDT=30000' as an account signing with the venue's keys from the environment
    (ARB_<VENUE>_API_KEY and ARB_<VENUE>_API_SECRET)."""
    venue, _, funds = spec.partition(":")
    if venue not in venues or not funds:
        raise CommandError(f"--fund wants VENUE:ASSET=AMOUNT,... with a venue from {list(venues)}")
    keys = credentials(venue)
    if keys is None:
        raise CommandError(f"--fund {venue} needs {' and '.join(credential_names(venue))} in the environment")
    return AccountSpec(venue, *keys, parse_balances(funds))


def simulated_feed(venue: str, seed: int) -> BookFeed:
    """The simulated market's book of `venue` at the moment each request asks."""

    def feed(symbol: str) -> Book:
        quote = simulated_book(seed, venue, symbol, wall_clock_ms())
        return Book(quote.bids, quote.asks, version=quote.received_ts)

    return feed


def start_emulator(
    venues: tuple[str, ...], port: int, accounts: list[AccountSpec], seed: int | None = None
) -> Emulator:
    emulator = emulate(*venues, port=port).start()
    for account in accounts:
        emulator.add_account(account.venue, account.key, account.secret, account.balances)
    if seed is not None:
        for venue in venues:
            emulator.feed_books(venue, simulated_feed(venue, seed))
    return emulator


class Command(BaseCommand):
    help = "Run the local exchange emulator (public and signed private endpoints) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (default: any free one)")
        parser.add_argument("--venues", default=",".join(DIALECTS), help="Comma-separated dialects to host")
        parser.add_argument(
            "--account",
            action="append",
            default=[],
            metavar="VENUE:KEY:SECRET:ASSET=AMOUNT,...",
            help="An account that may trade (repeatable); Kraken secrets are base64",
        )
        parser.add_argument(
            "--fund",
            action="append",
            default=[],
            metavar="VENUE:ASSET=AMOUNT,...",
            help="An account for the venue's keys in the environment (ARB_<VENUE>_API_KEY/_SECRET)",
        )
        parser.add_argument(
            "--simulate",
            type=int,
            metavar="SEED",
            help="Serve the simulated market's moving books (seeded) instead of fixed default ones",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        venues = parse_venues(options["venues"])
        accounts = [parse_account(spec, venues) for spec in options["account"]]
        accounts += [parse_funding(spec, venues) for spec in options["fund"]]
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        emulator = start_emulator(venues, options["port"], accounts, options["simulate"])
        try:
            for venue in venues:
                self.stdout.write(f"{venue}: {emulator.url_for(venue)}")
            for account in accounts:
                funds = ", ".join(f"{asset} {amount}" for asset, amount in account.balances.items())
                self.stdout.write(f"{account.venue} account funded with {funds}")
            self.stdout.write("emulator running; Ctrl-C to stop")
            while not stopping.wait(0.5):
                continue
        finally:
            emulator.stop()
        self.stdout.write("emulator stopped")
