"""`manage.py run_emulator`: the local exchange emulator for demos and manual tries.

    manage.py run_emulator --port 8600 --venues binance,kraken \
        --account binance:demo-key:demo-secret:BTC=1,USDT=30000

    ARB_BINANCE_API_KEY=... ARB_BINANCE_API_SECRET=... \
        manage.py run_emulator --simulate 7 --fund binance:BTC=1,USDT=30000

    manage.py run_emulator --account binance:k:s:BTC=1,USDT=30000,BNB=1 \
        --fee-asset binance=BNB --fee-price binance:BNB/USDT=600:0.25 --arrivals arrivals.jsonl

    manage.py run_emulator --simulate 7 --stream-port 8601 \
        --stream-fault binance:drop:30 --stream-fault kraken:stall_s=2:45

Point a venue's api_url at the printed URL, and a ccxt.pro client's websocket URLs under the
printed stream root; orders from an account's key match against the emulated books, and the
streams send each change of them: fixed default books, or with --simulate the simulated market
(the same one the simulated venues show), moving and dislocating, each venue under its own name.
--stream-fault injects a stream fault (a keyword of Emulator.set_stream_fault: drop,
bad_checksum, skip_ids=N, stall_s=S, burst=N) into a venue's streams every so many seconds. --fund opens an
account for the keys the trading processes read from the environment, so no secret goes on a
command line. --fee-asset says how a venue's accounts pay fees (quote, the default; received, as
Binance spot charges; base; or an asset such as BNB, valued with --fee-price). --arrivals appends a
JSON line for every new order as it arrives: venue, client order id, wall and monotonic clock in
ns. Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.emulator import DIALECTS, Emulator, emulate
from devtools.emulator.fees import MODES, QUOTE, valid_asset
from devtools.emulator.venue import Arrival, Book, BookFeed
from trading.credentials import credential_names, credentials
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


@dataclass(frozen=True)
class FeePriceSpec:
    venue: str
    symbol: str
    price: Decimal
    discount: Decimal


def parse_fee_asset(spec: str, venues: tuple[str, ...]) -> tuple[str, str]:
    """'binance=received' -> ('binance', 'received'): how that venue's accounts pay fees (quote,
    received, base, or an asset code such as BNB)."""
    venue, _, raw = spec.partition("=")
    asset = raw.strip().lower() if raw.strip().lower() in MODES else raw.strip().upper()
    if venue not in venues or not valid_asset(asset):
        raise CommandError(
            f"--fee-asset wants VENUE=quote|received|base|ASSET with a venue from {list(venues)}, "
            f"got {spec!r}"
        )
    return venue, asset


def parse_fee_price(spec: str, venues: tuple[str, ...]) -> FeePriceSpec:
    """'binance:BNB/USDT=600:0.25' -> fees in BNB valued at 600 USDT, 25% waived (discount
    optional)."""
    venue, _, rest = spec.partition(":")
    symbol, _, value = rest.partition("=")
    price, _, discount = value.partition(":")
    try:
        parsed = FeePriceSpec(venue, symbol.strip().upper(), Decimal(price), Decimal(discount or "0"))
    except InvalidOperation:
        parsed = None
    if venue not in venues or parsed is None or "/" not in parsed.symbol or parsed.price <= 0:
        raise CommandError(
            f"--fee-price wants VENUE:ASSET/QUOTE=PRICE[:DISCOUNT] with a venue from {list(venues)}"
        )
    return parsed


# set_stream_fault's keywords, and how each one's value is read (a flag takes none).
STREAM_FAULTS: dict[str, type] = {
    "drop": bool,
    "bad_checksum": bool,
    "skip_ids": int,
    "stall_s": float,
    "burst": int,
}


@dataclass(frozen=True)
class StreamFaultSpec:
    venue: str
    fault: dict[str, Any]  # one keyword of Emulator.set_stream_fault and its value
    every_s: float


def parse_stream_fault(spec: str, venues: tuple[str, ...]) -> StreamFaultSpec:
    """'binance:stall_s=2:60' -> a two-second stall of binance's streams every 60 seconds;
    'kraken:drop:30' -> kraken's stream connections dropped every 30 seconds."""
    venue, _, rest = spec.partition(":")
    fault, _, every = rest.rpartition(":")
    name, _, raw = fault.partition("=")
    parsed = _stream_fault(name, raw)
    try:
        every_s = float(every)
    except ValueError:
        every_s = 0.0
    if venue not in venues or parsed is None or not every_s > 0:
        raise CommandError(
            f"--stream-fault wants VENUE:FAULT[=VALUE]:EVERY_SECONDS with a venue from {list(venues)} "
            f"and a fault from {sorted(STREAM_FAULTS)}, got {spec!r}"
        )
    return StreamFaultSpec(venue, parsed, every_s)


def _stream_fault(name: str, raw: str) -> dict[str, Any] | None:
    """{name: value} for set_stream_fault; None for an unknown name or a value it cannot take."""
    kind = STREAM_FAULTS.get(name)
    if kind is None or (kind is bool) == bool(raw):
        return None
    try:
        value = True if kind is bool else kind(raw)
    except ValueError:
        return None
    return {name: value} if value and value > 0 else None


class StreamFaultSchedule:
    """Each fault of `specs`, injected every `every_s` seconds, the first that long after start."""

    def __init__(self, specs: tuple[StreamFaultSpec, ...], now: float) -> None:
        self._due = [(now + spec.every_s, spec) for spec in specs]

    def inject_due(self, emulator: Emulator, now: float) -> float:
        """Inject every fault due by `now`; the seconds until the next one (0.5 at most)."""
        for index, (due, spec) in enumerate(self._due):
            if due <= now:
                emulator.set_stream_fault(spec.venue, **spec.fault)
                self._due[index] = (now + spec.every_s, spec)
        return min([0.5] + [due - now for due, _ in self._due])


class ArrivalLog:
    """Appends one JSON line per new-order arrival to a file, flushed at once so that another
    process can follow it; safe from the emulator's request threads."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, venue: str, client_order_id: str, arrival: Arrival) -> None:
        line = json.dumps(
            {
                "venue": venue,
                "client_order_id": client_order_id,
                "wall_ns": arrival.wall_ns,
                "monotonic_ns": arrival.monotonic_ns,
            }
        )
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def simulated_feed(venue: str, seed: int) -> BookFeed:
    """The simulated market's book of `venue` at the moment each request asks."""

    def feed(symbol: str) -> Book:
        quote = simulated_book(seed, venue, symbol, wall_clock_ms())
        return Book(quote.bids, quote.asks, version=quote.received_ts)

    return feed


def start_emulator(
    venues: tuple[str, ...],
    port: int,
    accounts: list[AccountSpec],
    seed: int | None = None,
    *,
    fee_assets: dict[str, str] | None = None,
    fee_prices: tuple[FeePriceSpec, ...] = (),
    stream_port: int = 0,
) -> Emulator:
    """A started emulator hosting `venues`, with `accounts` paying fees as `fee_assets` says for
    their venue (quote where it says nothing) and fee assets valued at `fee_prices`."""
    emulator = emulate(*venues, port=port, stream_port=stream_port).start()
    for price in fee_prices:
        emulator.set_fee_price(price.venue, price.symbol, price.price, discount=price.discount)
    for account in accounts:
        fee_asset = (fee_assets or {}).get(account.venue, QUOTE)
        emulator.add_account(
            account.venue, account.key, account.secret, account.balances, fee_asset=fee_asset
        )
    if seed is not None:
        for venue in venues:
            emulator.feed_books(venue, simulated_feed(venue, seed))
    return emulator


class Command(BaseCommand):
    help = "Run the local exchange emulator (public and signed private endpoints) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (default: any free one)")
        parser.add_argument(
            "--stream-port", type=int, default=0, help="Websocket port on 127.0.0.1 (default: any free one)"
        )
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
        parser.add_argument(
            "--fee-asset",
            action="append",
            default=[],
            metavar="VENUE=quote|received|base|ASSET",
            help="How the venue's accounts pay fees (repeatable); Binance spot charges 'received'",
        )
        parser.add_argument(
            "--fee-price",
            action="append",
            default=[],
            metavar="VENUE:ASSET/QUOTE=PRICE[:DISCOUNT]",
            help="Value fees paid in ASSET at PRICE, DISCOUNT of them waived (repeatable)",
        )
        parser.add_argument(
            "--stream-fault",
            action="append",
            default=[],
            metavar="VENUE:FAULT[=VALUE]:EVERY_SECONDS",
            help=f"Inject a stream fault every so often (repeatable); faults: {', '.join(STREAM_FAULTS)}",
        )
        parser.add_argument(
            "--arrivals",
            type=Path,
            metavar="FILE",
            help="Append a JSON line per new order as it arrives (venue, client id, wall/monotonic ns)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        venues = parse_venues(options["venues"])
        accounts = [parse_account(spec, venues) for spec in options["account"]]
        accounts += [parse_funding(spec, venues) for spec in options["fund"]]
        fee_assets = dict(parse_fee_asset(spec, venues) for spec in options["fee_asset"])
        fee_prices = tuple(parse_fee_price(spec, venues) for spec in options["fee_price"])
        stream_faults = tuple(parse_stream_fault(spec, venues) for spec in options["stream_fault"])
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        emulator = start_emulator(
            venues,
            options["port"],
            accounts,
            options["simulate"],
            fee_assets=fee_assets,
            fee_prices=fee_prices,
            stream_port=options["stream_port"],
        )
        arrivals = ArrivalLog(options["arrivals"]) if options["arrivals"] else None
        emulator.on_arrival(arrivals)
        try:
            self._announce(emulator, venues, accounts)
            schedule = StreamFaultSchedule(stream_faults, time.monotonic())
            while not stopping.wait(schedule.inject_due(emulator, time.monotonic())):
                continue
        finally:
            emulator.stop()
            if arrivals is not None:
                arrivals.close()
        self.stdout.write("emulator stopped")

    def _announce(self, emulator: Emulator, venues: tuple[str, ...], accounts: list[AccountSpec]) -> None:
        for venue in venues:
            self.stdout.write(f"{venue}: {emulator.url_for(venue)}")
            self.stdout.write(f"{venue} streams: {emulator.stream_url_for(venue)}")
        for account in accounts:
            funds = ", ".join(f"{asset} {amount}" for asset, amount in account.balances.items())
            self.stdout.write(f"{account.venue} account funded with {funds}")
        self.stdout.write("emulator running; Ctrl-C to stop")
