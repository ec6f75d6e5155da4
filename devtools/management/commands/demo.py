"""`manage.py demo` (what `make demo` runs): the whole system on one machine, supervised.

Uses REDIS_URL and DATABASE_URL when set; otherwise starts its own redis-server on a free port
and uses the SQLite default. Migrates, creates the demo's venues, balances, strategy and admin,
then runs worker, beat, listener, streamer, web and Flower as supervised children, prints where
to look and a status line every few seconds, and stops everything on Ctrl-C, SIGTERM or after
DEMO_SECONDS.
The last line of output is one JSON object: quotes, opportunities, trades, pnl and more.

With DEMO_MODE=live it trades live instead: real ccxt orders, signed with keys made for the run,
to the local exchange emulator's Binance and Kraken serving the simulated market.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from decimal import Decimal
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import DatabaseError, connection
from django.utils import timezone

from devtools.demo.environment import (
    DemoConfig,
    child_environment,
    demo_config,
    emulator_spec,
    free_port,
    live_environment,
    process_specs,
    redis_server_spec,
    require_free_ports,
    wait_for_port,
    wait_for_redis,
)
from devtools.demo.setup import setup_demo
from devtools.demo.status import (
    Counts,
    HoldingsChange,
    counts_since,
    holdings,
    holdings_change,
    holdings_line,
    status_line,
    summary,
)
from devtools.demo.supervisor import Supervisor
from trading.core.types import split_symbol

TICK_S = 0.5
STATUS_EVERY_S = 5.0
STOP_GRACE_S = 10.0


class StopRequest:
    """Set by SIGINT or SIGTERM; the watch loop ends at its next tick and the children stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @classmethod
    def install(cls) -> StopRequest:
        request = cls()
        signal.signal(signal.SIGINT, request)
        signal.signal(signal.SIGTERM, request)
        return request


class Command(BaseCommand):
    help = (
        "Run the whole arbitrage system on simulated venues, on paper (DEMO_MODE=live: live orders "
        "to the local exchange emulator), until Ctrl-C or DEMO_SECONDS."
    )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        config = demo_config(os.environ, settings.BASE_DIR)
        require_free_ports(config)
        stop = StopRequest.install()
        supervisor = Supervisor(config.log_dir, settings.BASE_DIR, report=self.say)
        started_at, started = timezone.now(), time.monotonic()
        before: dict[str, Decimal] | None = None
        currency = ""
        try:
            env = child_environment(os.environ, self.start_redis(supervisor))
            traders = live_environment(env) if config.live else None
            roots = self.start_emulator(supervisor, traders) if traders is not None else None
            currency = self.prepare_database(config, roots)
            before = holdings()
            for spec in process_specs(env, config, settings.BASE_DIR, traders):
                supervisor.start(spec)
            self.print_access(config)
            self.watch(supervisor, stop, config, started_at)
        finally:
            self.say("stopping every demo process...")
            # Nothing new is decided once the listener, the streamer and beat are gone; the worker
            # then finishes the trades under way against venues and a broker still up.
            supervisor.stop_all(
                STOP_GRACE_S, first=("listener", "streamer", "beat"), last=("emulator", "redis")
            )
        held = holdings_change(before, started_at, currency) if before is not None else None
        self.print_summary(counts_since(started_at), held, time.monotonic() - started, supervisor)

    def start_redis(self, supervisor: Supervisor) -> str | None:
        """The Redis URL the children must use: None to keep REDIS_URL, else the demo's own server."""
        if os.environ.get("REDIS_URL"):
            self.say("redis: using REDIS_URL")
            return None
        port = free_port()
        supervisor.start(redis_server_spec(port, os.environ))
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(url)
        self.say(f"redis: own redis-server on 127.0.0.1:{port}")
        return url

    def start_emulator(self, supervisor: Supervisor, env: dict[str, str]) -> tuple[str, str]:
        """Start the live demo's exchange emulator; its API root and its websocket root."""
        port, stream_port = free_port(), free_port()
        supervisor.start(emulator_spec(port, env, settings.SIMULATION_SEED, settings.BASE_DIR, stream_port))
        wait_for_port(port, "the exchange emulator")
        wait_for_port(stream_port, "the exchange emulator's streams")
        self.say(
            f"exchange emulator: binance and kraken on http://127.0.0.1:{port}, streaming on "
            f"ws://127.0.0.1:{stream_port}, trading LIVE"
        )
        return f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{stream_port}"

    def prepare_database(self, config: DemoConfig, emulator_roots: tuple[str, str] | None) -> str:
        """Migrate and set the demo up (live on the emulator at `emulator_roots`, its API and
        websocket roots, when given); the currency its strategy counts money in."""
        db = settings.DATABASES["default"]
        self.say(f"database: {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}; migrating...")
        config.log_dir.mkdir(parents=True, exist_ok=True)
        with (config.log_dir / "setup.log").open("a") as log:
            call_command("migrate", interactive=False, verbosity=1, stdout=log)
        api_root, stream_root = emulator_roots or (None, None)
        setup = setup_demo(config.admin.user, config.admin.password, api_root, stream_root)
        venues = ", ".join(venue.name for venue in setup.venues)
        self.say(f"venues: {venues}; strategy {setup.strategy} on {', '.join(setup.strategy.symbols)}")
        return split_symbol(setup.strategy.symbols[0])[1]

    def print_access(self, config: DemoConfig) -> None:
        self.say("")
        self.say(f"  admin   http://127.0.0.1:{config.web_port}/admin/")
        self.say(f"          user {config.admin.user}  password {config.admin.password}")
        self.say(f"  flower  http://127.0.0.1:{config.flower_port}/")
        self.say(f"          user {config.flower.user}  password {config.flower.password}")
        self.say(f"  logs    {config.log_dir}/")
        length = "until Ctrl-C" if config.seconds is None else f"for {config.seconds:.0f}s"
        self.say(f"  running {length}; a status line every {STATUS_EVERY_S:.0f}s")
        self.say("")

    def watch(
        self, supervisor: Supervisor, stop: StopRequest, config: DemoConfig, started_at: datetime
    ) -> None:
        """Keep the children alive and report until a stop signal or the end of DEMO_SECONDS."""
        began = last_status = time.monotonic()
        before: Counts | None = None
        while stop.signum is None:
            time.sleep(TICK_S)
            now = time.monotonic()
            if config.seconds is not None and now - began >= config.seconds:
                return
            supervisor.check()
            if now - last_status >= STATUS_EVERY_S:
                before = self.report_status(now - began, started_at, before, now - last_status)
                last_status = now
        self.say(f"received {signal.Signals(stop.signum).name}")

    def report_status(
        self, elapsed_s: float, started_at: datetime, before: Counts | None, interval_s: float
    ) -> Counts | None:
        try:
            counts = counts_since(started_at)
        except DatabaseError as exc:
            self.say(f"status unavailable: {exc}")
            connection.close()  # reconnect at the next status line
            return before
        self.say(status_line(elapsed_s, counts, before, interval_s))
        return counts

    def print_summary(
        self, counts: Counts, held: HoldingsChange | None, seconds: float, supervisor: Supervisor
    ) -> None:
        restarts = supervisor.restart_counts
        restarted = ", ".join(f"{name} x{n}" for name, n in restarts.items() if n) or "none"
        self.say("")
        self.say(f"demo ran {seconds:.0f}s; restarts: {restarted}")
        self.say(
            f"quotes {counts.quotes}, opportunities {counts.opportunities} "
            f"({counts.rejected} rejected), trades {counts.trades} ({counts.below_expected} below "
            f"expected), pnl {counts.pnl:+.2f}"
        )
        if held is not None:
            self.say(holdings_line(held))
        self.say(summary(counts, held, seconds, restarts))
