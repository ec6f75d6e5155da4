"""`manage.py stream_prices`: venues' order books through ccxt.pro's websockets, onto Pub/Sub."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from trading.pubsub import connect, names
from trading.streamer import Streamer


class Command(BaseCommand):
    help = (
        "Stream the order books of the enabled ccxt venues fed by stream or both, and publish each "
        "change on the venues' price channels, until SIGTERM or Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--venues",
            default="",
            help="Stream only these venues (comma-separated names), so that processes can split them",
        )
        parser.add_argument("--name", default="", help="Name in heartbeats (default: streamer-<pid>)")

    def handle(self, *args: Any, **options: Any) -> None:
        venues = [name.strip() for name in options["venues"].split(",") if name.strip()]
        streamer = Streamer(connect(), venues=venues or None, name=options["name"])
        asyncio.run(self.stream(streamer))
        self.stdout.write("streamer stopped")

    async def stream(self, streamer: Streamer) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

        def ready() -> None:
            streamed = ", ".join(sorted(streamer.streams)) or "no venue yet"
            self.stdout.write(f"streaming {streamed} onto {names().prefix}prices")
            self.stdout.flush()

        await streamer.run(stopping, on_ready=ready)
