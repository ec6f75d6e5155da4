"""`manage.py listen_prices`: the Redis Pub/Sub bridge from price events to strategy decisions."""

from __future__ import annotations

import importlib
import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from trading import trade_store
from trading.listener import Listener, connect
from trading.mode import announce_trading_mode


class Command(BaseCommand):
    help = "Listen to price events on Redis Pub/Sub, decide, record and dispatch opportunities."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--symbols",
            nargs="+",
            help="Own only these symbols (e.g. BTC/USDT); default: the active strategy's, on prices.*",
        )
        parser.add_argument("--name", default="", help="Name in heartbeats (default: listener-<pid>)")

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        trade_store.defer_flushes()  # an opportunity lost in a crash is one that never traded
        listener = Listener(connect(), symbols=options["symbols"], name=options["name"])
        mode = announce_trading_mode()
        # The first dispatch would import the trade task and all it trades with (ccxt alone takes
        # seconds on a slow host) while the opportunity's books age: ready means ready to dispatch.
        importlib.import_module("trading.tasks")

        def ready() -> None:
            owned = ", ".join(listener.symbols) or "nothing yet"
            self.stdout.write(f"listening on {listener.names.prefix}prices ({owned}); trading on {mode}")

        listener.run(should_stop=lambda: stopping, on_ready=ready)
        self.stdout.write(f"listener stopped: {listener.stats.as_dict()}")
