"""Shared fixtures: real Redis, real PostgreSQL, and real child processes (worker, listener)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.conf import settings

from trading.models import Balance, StrategyConfig, Venue
from trading.pubsub import Names

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test Redis; every key under this run's prefix is removed afterwards."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    keys = list(client.scan_iter(match=f"{settings.ARB_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def names() -> Names:
    return Names(settings.ARB_PREFIX)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this run's settings, pointed at the test database."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Child:
    """A child process whose output goes to a file, so a test can wait for a line in it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen within {timeout}s; output:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start child processes that are stopped at the end of the test, whatever happens."""
    children: list[Child] = []

    def start(*args: str, name: str = "child", env: dict[str, str] | None = None) -> Child:
        child = Child(list(args), tmp_path / f"{name}-{len(children)}.log", env or child_env())
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


@pytest.fixture
def celery_worker(spawn: Callable[..., Child]) -> Child:
    """A real Celery worker on every queue, against the test database and this run's Redis prefix."""
    worker = spawn(
        sys.executable,
        "-m",
        "celery",
        "-A",
        "arbsite",
        "worker",
        "-Q",
        "collect,trade,default",
        "-c",
        "1",
        "-P",
        "solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "INFO",
        "-n",
        f"test-{os.getpid()}@%h",
        name="worker",
    )
    worker.wait_for("ready.", timeout=60)
    return worker


def make_venue(name: str, **fields: object) -> Venue:
    defaults: dict[str, object] = {
        "kind": Venue.Kind.SIMULATED,
        "taker_fee": Decimal("0.001"),
        "maker_fee": Decimal("0.001"),
        "max_quote_age_ms": 5_000,
    }
    defaults.update(fields)
    return Venue.objects.create(name=name, **defaults)


def fund(venue: Venue, **assets: str) -> None:
    for asset, amount in assets.items():
        Balance.objects.update_or_create(venue=venue, asset=asset, defaults={"free": Decimal(amount)})


def make_strategy(**fields: object) -> StrategyConfig:
    defaults: dict[str, object] = {
        "version": 1,
        "active": True,
        "symbols": ["BTC/USDT"],
        "min_profit_bps": Decimal("5"),
        "trade_size": Decimal("0.5"),
    }
    defaults.update(fields)
    return StrategyConfig.objects.create(**defaults)


def next_message(channel: redis.client.PubSub, timeout: float = 5) -> dict | None:
    """The next published message on `channel` (subscription confirmations skipped), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = channel.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None
