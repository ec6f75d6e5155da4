"""Shared fixtures: real Redis, real PostgreSQL, and real child processes (worker, listener)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.conf import settings

from devtools.emulator import Emulator
from tests.deadlines import Deadline, scale_source, scaled, timeout_scale
from trading import orders
from trading.core.policy import Role
from trading.models import Balance, Deployment, Opportunity, Order, RiskLimits, StrategyConfig, Venue
from trading.pubsub import Names

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart() -> None:
    timeout_scale()  # measured before any test starts processes of its own that load the machine


def pytest_report_header() -> str:
    return f"timeouts scaled x{timeout_scale():.2f} ({scale_source()})"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test Redis. Every key under this run's prefix is removed before (a test that
    did not ask for this client may have left tasks in the queues) and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    clear_prefix(client)
    yield client
    clear_prefix(client)
    client.close()


def clear_prefix(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{settings.ARB_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


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
        """Return once `text` is in the output; fail when the process exits without printing it or
        `timeout` (reference seconds, scaled) passes first."""
        deadline = Deadline(timeout)
        while True:
            exited = self.proc.poll() is not None  # looked at first: what it printed last still counts
            if text in self.output():
                return
            if exited or deadline.passed():
                why = f"exited ({self.proc.returncode})" if exited else f"not within {deadline.seconds:.0f}s"
                raise AssertionError(f"{text!r} not seen: {why}; output:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(timeout))
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, which the test may stop and start again."""

    def __init__(self, spawn: Callable[..., Child], directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._spawn = spawn
        self._args = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self._args += ["--dir", str(directory)]
        self.client = redis.Redis(port=self.port)

    def start(self) -> None:
        self.server = self._spawn(*self._args, name="redis")
        self.server.wait_for("Ready to accept connections", timeout=20)

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server, saving its keys first when `keep_data` (so that the collectors'
        sequence numbers go on after a restart), and wait until its process has exited."""
        # The server drops the connection as it stops: that is its answer.
        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown(save=keep_data, nosave=not keep_data)
        self.server.proc.wait(scaled(10))  # the port is free once the old server has exited

    def restart(self, keep_data: bool = False) -> None:
        self.stop(keep_data)
        self.start()


@pytest.fixture
def private_redis(spawn: Callable[..., Child], tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(spawn, tmp_path)
    server.start()
    yield server
    server.client.close()


def start_worker(
    spawn: Callable[..., Child],
    *,
    pool: str = "solo",
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> Child:
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
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"test-{pool}-{os.getpid()}@%h",
        name=f"{pool}-worker",
        env=env,
    )
    worker.wait_for("ready.", timeout=60)
    return worker


@pytest.fixture
def celery_worker(spawn: Callable[..., Child]) -> Child:
    return start_worker(spawn)


@pytest.fixture
def market() -> None:
    """alpha (0 BTC, 100,000 USDT) and bravo (2 BTC, 0 USDT), and a strategy trading 0.5 BTC."""
    fund(make_venue("alpha"), BTC="0", USDT="100000")
    fund(make_venue("bravo"), BTC="2", USDT="0")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"), ttl_ms=60_000)


def set_limits(**fields: object) -> None:
    """The risk limits row with these fields changed."""
    RiskLimits.current()
    RiskLimits.objects.filter(pk=1).update(**fields)


def emulated_venues(emulator: Emulator) -> dict[str, Venue]:
    """The emulator's binance and kraken as ccxt venues pointed at it."""
    return {
        name: make_venue(name, kind=Venue.Kind.CCXT, ccxt_id=name, api_url=emulator.url_for(name))
        for name in ("binance", "kraken")
    }


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
    """The next published message on `channel` (subscription confirmations skipped), or None
    after `timeout` (reference seconds, scaled)."""
    deadline = Deadline(timeout)
    while not deadline.passed():
        message = channel.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


def order_key(order: Order) -> str:
    """How tests name an order: its role, and its attempt past the first ("sell-r1", "hedge")."""
    return order.role if not order.attempt else f"{order.role}-r{order.attempt}"


def orders_by_key(opportunity: Opportunity | None = None) -> dict[str, Order]:
    """The orders (of `opportunity`, or all) by `order_key`."""
    rows = Order.objects.all() if opportunity is None else Order.objects.filter(opportunity=opportunity)
    return {order_key(order): order for order in rows.select_related("venue")}


def client_id(opportunity: Opportunity, role: str, attempt: int = 0) -> str:
    """The client order id this deployment gives the order of `opportunity` in `role`."""
    return orders.client_order_id(Deployment.current_key(), opportunity.pk, Role(role), attempt)
