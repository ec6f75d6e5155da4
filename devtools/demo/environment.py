"""What the demo's children run with: ports, credentials, Redis and the environment they inherit.

The demo's own settings are loaded before it can choose a Redis server, so everything it chooses
reaches the children through their environment only.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from django.core.management.base import CommandError

from devtools.demo.setup import DEMO_BALANCES, LIVE_VENUES
from devtools.demo.supervisor import ProcessSpec
from trading.credentials import credential_names

# Secrets the children do not need, and Flower settings it would misread as its own options.
WITHHELD = ("DEMO_ADMIN_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD")
REDIS_START_TIMEOUT_S = 10.0
EMULATOR_START_TIMEOUT_S = 30.0
MODES = ("paper", "live")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


@dataclass(frozen=True)
class DemoConfig:
    """Everything the person running the demo can choose, read once from the environment."""

    web_port: int
    flower_port: int
    seconds: float | None
    live: bool  # DEMO_MODE=live: real orders through ccxt to the local exchange emulator
    admin: Credentials
    flower: Credentials
    log_dir: Path


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise CommandError(f"{name} must be an integer, got {raw!r}") from None


def _credentials(environ: Mapping[str, str], user_var: str, password_var: str, user: str) -> Credentials:
    return Credentials(
        user=environ.get(user_var) or user,
        password=environ.get(password_var) or secrets.token_urlsafe(12),
    )


def demo_config(environ: Mapping[str, str], base_dir: Path) -> DemoConfig:
    """Ports, run length and credentials: set ones are used, missing passwords are generated."""
    seconds = environ.get("DEMO_SECONDS")
    try:
        run_for = float(seconds) if seconds else None
    except ValueError:
        raise CommandError(f"DEMO_SECONDS must be a number, got {seconds!r}") from None
    mode = environ.get("DEMO_MODE") or "paper"
    if mode not in MODES:
        raise CommandError(f"DEMO_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    return DemoConfig(
        web_port=_int(environ, "WEB_PORT", 8000),
        flower_port=_int(environ, "FLOWER_PORT", 5555),
        seconds=run_for,
        live=mode == "live",
        admin=_credentials(environ, "DEMO_ADMIN_USER", "DEMO_ADMIN_PASSWORD", "admin"),
        flower=_credentials(environ, "FLOWER_USER", "FLOWER_PASSWORD", "flower"),
        log_dir=Path(environ.get("DEMO_LOG_DIR") or base_dir / ".demo" / "logs"),
    )


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_free_ports(config: DemoConfig) -> None:
    """Raise CommandError naming the variable to change when a port the demo serves on is taken."""
    for name, port in (("WEB_PORT", config.web_port), ("FLOWER_PORT", config.flower_port)):
        if not port_is_free(port):
            raise CommandError(f"port {port} on 127.0.0.1 is in use; set {name} to a free port")


def free_port() -> int:
    """A port nothing listens on now: whatever the machine runs on 6379, the demo's Redis is its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def redis_server_spec(port: int, environ: Mapping[str, str]) -> ProcessSpec:
    """The demo's own Redis: loopback only, nothing written to disk. CommandError when absent."""
    binary = shutil.which("redis-server", path=environ.get("PATH"))
    if binary is None:
        raise CommandError(
            "redis-server is not installed and REDIS_URL is not set. Install Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
            "or set REDIS_URL to a running server."
        )
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return ProcessSpec("redis", args, {k: v for k, v in environ.items() if k not in WITHHELD})


def wait_for_redis(url: str, timeout_s: float = REDIS_START_TIMEOUT_S) -> None:
    """Return once `url` answers PING; CommandError after `timeout_s`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise CommandError(f"Redis at {url} did not answer within {timeout_s:.0f}s") from None
                time.sleep(0.1)
    finally:
        client.close()


def wait_for_port(port: int, what: str, timeout_s: float = EMULATOR_START_TIMEOUT_S) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; CommandError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{what} on 127.0.0.1:{port} did not start within {timeout_s:.0f}s"
                ) from None
            time.sleep(0.2)


def live_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for the processes that trade in the live demo: live mode, ccxt's pacing off (the
    emulator has no rate limits), and fresh keys for this run's emulator accounts, as the
    variables every venue's keys come from. Kraken takes base64 secrets; Binance any string."""
    live = dict(env, TRADING_MODE="live", LIVE_RATE_LIMITED="0")
    for venue in LIVE_VENUES:
        key_name, secret_name = credential_names(venue)
        live[key_name] = f"demo-{venue}-{secrets.token_hex(8)}"
        live[secret_name] = base64.b64encode(secrets.token_bytes(24)).decode()
    return live


def emulator_spec(
    port: int, env: dict[str, str], seed: int, base_dir: Path, stream_port: int = 0
) -> ProcessSpec:
    """The exchange emulator of the live demo: Binance and Kraken on the simulated market, their
    books streamed on `stream_port` too, one account each for the keys in `env`, funded like the
    demo's venues."""
    funds = ",".join(f"{asset}={amount}" for asset, amount in DEMO_BALANCES.items())
    args = [sys.executable, str(base_dir / "manage.py"), "run_emulator", "--port", str(port)]
    args += ["--stream-port", str(stream_port)]
    args += ["--venues", ",".join(LIVE_VENUES), "--simulate", str(seed)]
    for venue in LIVE_VENUES:
        args += ["--fund", f"{venue}:{funds}"]
    return ProcessSpec("emulator", args, env)


def child_environment(
    environ: Mapping[str, str], redis_url: str | None, secret_key: str | None = None
) -> dict[str, str]:
    """The environment every child inherits: DEBUG on and a per-run SECRET_KEY unless set, the
    chosen Redis when the demo runs its own, unbuffered output for the log files."""
    env = {name: value for name, value in environ.items() if name not in WITHHELD}
    env.setdefault("DEBUG", "1")
    if not env.get("SECRET_KEY"):
        env["SECRET_KEY"] = secret_key or secrets.token_urlsafe(50)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
        env.pop("CELERY_BROKER_URL", None)  # the broker follows REDIS_URL: the demo's own server
    env["PYTHONUNBUFFERED"] = "1"
    # The children's metrics, in one fresh directory that /metrics adds up (multiprocess mode).
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="arb-metrics-")
    return env


def process_specs(
    env: dict[str, str], config: DemoConfig, base_dir: Path, traders: dict[str, str] | None = None
) -> list[ProcessSpec]:
    """The demo's processes, in start order (the worker first: the others feed it). The worker
    and the listener run with `traders` when given (the live demo's keys go to them only)."""
    trading_env = traders or env
    python, manage = sys.executable, str(base_dir / "manage.py")
    celery = [python, "-m", "celery", "-A", "arbsite"]
    flower_env = dict(env, FLOWER_BASIC_AUTH=f"{config.flower.user}:{config.flower.password}")
    return [
        ProcessSpec(
            "worker",
            [
                *celery,
                "worker",
                "-Q",
                "collect,trade,default",
                "-c",
                "2",
                "-E",
                "-l",
                "INFO",
                "-n",
                "demo@%h",
            ],
            trading_env,
        ),
        ProcessSpec("beat", [*celery, "beat", "-S", "django", "-l", "INFO"], env),
        ProcessSpec("listener", [python, manage, "listen_prices"], trading_env),
        ProcessSpec("streamer", [python, manage, "stream_prices"], env),
        ProcessSpec("web", [python, manage, "runserver", f"127.0.0.1:{config.web_port}", "--noreload"], env),
        ProcessSpec(
            "flower",
            [*celery, "flower", "--address=127.0.0.1", f"--port={config.flower_port}"],
            flower_env,
        ),
    ]
