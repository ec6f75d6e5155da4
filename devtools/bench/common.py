"""What the benchmarks share: figures from samples, the strategy and venues of a run, and the real
processes (listener, worker, streamer) a benchmark spawns and stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings

from devtools.emulator import Emulator
from trading.models import StrategyConfig, Venue

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank; `values` must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def activate_strategy(**fields: Any) -> StrategyConfig:
    """A new strategy version with these fields, the only active one."""
    version = (StrategyConfig.objects.order_by("-version").values_list("version", flat=True).first() or 0) + 1
    StrategyConfig.objects.update(active=False)
    return StrategyConfig.objects.create(version=version, active=True, **fields)


def emulated_venue(emulator: Emulator, dialect: str, name: str, fee: Decimal, **fields: Any) -> Venue:
    """A ccxt venue of `dialect` whose REST API is the emulator's."""
    return Venue.objects.create(
        name=name,
        kind=Venue.Kind.CCXT,
        ccxt_id=dialect,
        api_url=emulator.url_for(dialect),
        taker_fee=fee,
        maker_fee=fee,
        price_tick=Decimal("0.01"),
        min_cost=Decimal(5),
        **fields,
    )


def child_env(prefix: str, **overrides: str) -> dict[str, str]:
    """The environment of a spawned process: this run's database, Redis and key prefix, as in
    production otherwise, with `overrides`."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        ARB_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
        # As in production: debug mode keeps every query's SQL and wraps every cursor.
        DEBUG="0",
        SECRET_KEY=os.environ.get("SECRET_KEY") or uuid.uuid4().hex,
    )
    env.update(overrides)
    return env


def log_path(env: dict[str, str], name: str) -> Path:
    """Where a spawned process of this run writes its output."""
    return Path(env.get("DEMO_LOG_DIR", "/tmp")) / f"{name}-{os.getpid()}.log"


def manage(*args: str) -> list[str]:
    """The command line of `manage.py` with `args`."""
    return [sys.executable, str(ROOT / "manage.py"), *args]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Return once `text` is in the process's output; raises RuntimeError if the process ends or
    `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} not seen in {log} within {timeout:.0f} s")


def stop(processes: Iterable[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM every process, then wait for each (killed after `timeout`)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
