"""`manage.py demo` run whole, as `make demo` runs it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener, urlopen

import psycopg
import pytest
import redis
from django.conf import settings

from devtools.demo.environment import free_port
from devtools.demo.setup import LIVE_VENUES
from trading.venues.simulated import dislocation_bps

from .conftest import ROOT
from .deadlines import Deadline, scaled, wait_until

# A status line: "[    40s] quotes 152 (4.0/s) | opportunities 9 (1 rejected) | ..."
STATUS_QUOTES = re.compile(r"^\[\s*\d+s\] quotes (\d+) ", re.MULTILINE)
# The live demo trades when binance or kraken moves MOVE_BPS away from the market (twice the
# round trip's fees and spreads) for MOVE_MS or longer. The test chooses a market in which such a
# move starts within MOVE_EVERY_MS of any moment until the demo should be up (LIVE_DEMO_UP_S,
# scaled); one that comes up later still finds the market's next move, MOVE_SEARCH_MS ahead.
MOVE_BPS = 45
MOVE_MS = 3_000
MOVE_SAMPLE_MS = 250
MOVE_LOOKAHEAD_MS = 10_000  # longer than any move, to see the last one end
MOVE_EVERY_MS = 90_000
MOVE_SEARCH_MS = 300_000
LIVE_DEMO_UP_S = 60

# --- manage.py demo, whole ---------------------------------------------------------------------


def _demo_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment `make demo` would see, on `database_url`: never the run's own database,
    which the demo would migrate and fill with its venues."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", DEBUG="1", DATABASE_URL=database_url)
    for name in ("DEMO_ADMIN_PASSWORD", "FLOWER_PASSWORD", "WEB_PORT", "FLOWER_PORT", "DEMO_SECONDS"):
        env.pop(name, None)
    env.update(extra)
    return env


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'demo.sqlite3'}"


def _run_demo_quickly(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


def test_demo_says_how_to_install_redis_when_it_has_none_to_use(tmp_path: Path) -> None:
    env = _demo_env(
        _sqlite_url(tmp_path),
        PATH=str(tmp_path),
        DEMO_LOG_DIR=str(tmp_path / "logs"),
        WEB_PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
    )
    env.pop("REDIS_URL")
    result = _run_demo_quickly(env)
    assert result.returncode == 1
    assert "redis-server is not installed" in result.stderr
    assert "REDIS_URL" in result.stderr


def test_demo_refuses_a_web_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _demo_env(_sqlite_url(tmp_path), WEB_PORT=str(port), DEMO_LOG_DIR=str(tmp_path))
        result = _run_demo_quickly(env)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "WEB_PORT" in result.stderr


def _marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries `mark`: the demo and everything it started."""
    needle = mark.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue  # exited while we looked, or not ours to read
    return found


class DemoRun:
    """`manage.py demo` in its own session, output to a file read while it runs."""

    def __init__(self, tmp_path: Path, database_url: str, unset: tuple[str, ...] = (), **env: str) -> None:
        self.mark = f"DEMO_TEST_RUN={uuid.uuid4().hex}"
        name, value = self.mark.split("=")
        self.prefix = env.setdefault("ARB_PREFIX", f"{settings.ARB_PREFIX}demo-{value[:8]}:")
        self.web_port, self.flower_port = free_port(), free_port()
        self.out_path, self.log_dir = tmp_path / "demo.out", tmp_path / "logs"
        full_env = _demo_env(
            database_url,
            WEB_PORT=str(self.web_port),
            FLOWER_PORT=str(self.flower_port),
            DEMO_LOG_DIR=str(self.log_dir),
            **{name: value},
            **env,
        )
        for variable in unset:
            full_env.pop(variable, None)
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "demo"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self, process: str) -> str:
        """What one of the demo's processes has logged so far."""
        path = self.log_dir / f"{process}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, seen: Callable[[str], object], what: str, deadline: Deadline) -> str:
        """The output once `seen` holds for it; fails when the demo ends first or at `deadline`."""
        while not seen(output := self.output()):
            assert self.proc.poll() is None, f"demo ended before {what}:\n{output}"
            assert not deadline.passed(), f"no {what} within {deadline.seconds:.0f}s:\n{output}"
            time.sleep(0.2)
        return output

    def wait_for_output(self, text: str, timeout_s: float) -> str:
        return self.wait_for(lambda output: text in output, repr(text), Deadline(timeout_s))

    def collecting(self, output: str) -> bool:
        """Whether a status line counts stored quotes: worker, beat and storage are running."""
        return _quotes_reported(output) > 0

    def trading(self, output: str) -> bool:
        """Whether quotes are stored and the listener listens: a gap from now on is traded."""
        return self.collecting(output) and "listening on" in self.log("listener")

    def wait_until_collecting(self, timeout_s: float = 120) -> None:
        self.wait_for(self.collecting, "status line with quotes", Deadline(timeout_s))

    def finish(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=scaled(timeout_s))

    def kill_leftovers(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in _marked_processes(self.mark):
            os.kill(pid, signal.SIGKILL)

    @contextmanager
    def cleaned_up(self) -> Iterator[None]:
        """Afterwards, whatever happened: no process of the run left, nor any Redis key under its
        own prefix (set with ARB_PREFIX unless the run was given one)."""
        try:
            yield
        finally:
            self.kill_leftovers()
            client = redis.Redis.from_url(settings.REDIS_URL)
            leftovers = list(client.scan_iter(match=f"{self.prefix}*"))
            if leftovers:
                client.delete(*leftovers)
            client.close()


def _quotes_reported(output: str) -> int:
    """The quote count of the demo's latest status line; 0 before the first."""
    counts = STATUS_QUOTES.findall(output)
    return int(counts[-1]) if counts else 0


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urlopen(Request(url, headers=headers or {}), timeout=scaled(5)) as response:
            return int(response.status)
    except HTTPError as error:
        return error.code


def _wait_until_served(url: str, timeout_s: float) -> None:
    deadline = Deadline(timeout_s)
    while True:
        try:
            _get(url)
            return
        except (URLError, ConnectionError, TimeoutError):
            assert not deadline.passed(), f"{url} never answered"
            time.sleep(0.3)


def _admin_login(base: str, user: str, password: str) -> str:
    """Log in through the admin form; returns the page the login lands on."""
    opener = build_opener(HTTPCookieProcessor(CookieJar()))
    with opener.open(f"{base}/admin/login/", timeout=scaled(5)) as page:
        html = page.read().decode()
    token = html.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    form = urlencode(
        {"username": user, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"}
    ).encode()
    request = Request(f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"})
    with opener.open(request, timeout=scaled(5)) as landed:
        return f"{landed.url}\n{landed.read().decode()}"


def _printed_credentials(output: str, service: str) -> tuple[str, str]:
    words = output.split(f"  {service} ")[1].split("\n")[1].split()
    return words[words.index("user") + 1], words[words.index("password") + 1]


def _check_web_and_flower(run: DemoRun) -> None:
    output = run.wait_for_output("a status line every", timeout_s=90)
    web, flower = f"http://127.0.0.1:{run.web_port}", f"http://127.0.0.1:{run.flower_port}"
    _wait_until_served(f"{web}/admin/login/", timeout_s=30)
    landed = _admin_login(web, *_printed_credentials(output, "admin"))
    assert landed.startswith(f"{web}/admin/\n")
    assert "Log out" in landed
    _wait_until_served(flower, timeout_s=30)
    assert _get(flower) == 401
    user, password = _printed_credentials(output, "flower")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert _get(flower, {"Authorization": f"Basic {auth}"}) == 200


def _summary_of(run: DemoRun) -> dict[str, Any]:
    last_line = run.output().strip().splitlines()[-1]
    figures: dict[str, Any] = json.loads(last_line)
    return figures


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one demo run, dropped afterwards."""
    db = settings.DATABASES["default"]
    name = f"arb_demo_{uuid.uuid4().hex[:8]}"
    server = f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_demo_on_postgresql_and_the_test_redis_serves_admin_and_flower_then_stops_clean(
    tmp_path: Path, fresh_database: str
) -> None:
    run = DemoRun(tmp_path, fresh_database, REDIS_URL=settings.REDIS_URL)
    with run.cleaned_up():
        _check_web_and_flower(run)
        run.wait_until_collecting()
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout_s=60) == 0
        assert _marked_processes(run.mark) == []
    figures = _summary_of(run)
    assert figures["quotes"] > 0
    with psycopg.connect(fresh_database) as conn:
        venues = conn.execute("SELECT count(*) FROM trading_venue WHERE kind = 'simulated'").fetchone()
        record = "SELECT count(*), coalesce(sum(realized_pnl), 0) FROM trading_trade"
        trades, pnl = conn.execute(record).fetchone()
        flows = "SELECT coalesce(sum(base_flow), 0), coalesce(sum(quote_flow), 0) FROM trading_trade"
        base_flow, quote_flow = conn.execute(flows).fetchone()
        held = "SELECT asset, sum(free + locked) FROM trading_balance GROUP BY asset"
        holdings = dict(conn.execute(held).fetchall())
    assert venues == (4,)
    # The summary tells the record: every trade of this fresh database, and their realized PnL.
    assert (figures["trades"], Decimal(figures["pnl"])) == (trades, pnl)
    assert figures["opportunities"] >= figures["trades"]
    # The venues' holdings moved by exactly what the trades record, from 4 x (1 BTC, 30,000 USDT).
    change = {asset: Decimal(amount) for asset, amount in figures["holdings_change"].items()}
    assert change == {"BTC": holdings["BTC"] - 4, "USDT": holdings["USDT"] - 120_000}
    assert (change["BTC"], change["USDT"]) == (base_flow, quote_flow)
    if change["BTC"] == 0:  # no position left open: the PnL is the quote gained
        assert Decimal(figures["holdings_value"] or 0) == pnl == change["USDT"]


@pytest.mark.slow
def test_demo_seconds_ends_the_demo_by_itself_leaving_nothing_behind(tmp_path: Path) -> None:
    run = DemoRun(tmp_path, _sqlite_url(tmp_path), REDIS_URL=settings.REDIS_URL, DEMO_SECONDS="1")
    with run.cleaned_up():
        assert run.finish(timeout_s=90) == 0
        assert _marked_processes(run.mark) == []
    output = run.output()
    assert "running for 1s" in output
    assert "received SIG" not in output
    assert _summary_of(run)["seconds"] >= 1


@pytest.mark.slow
def test_demo_with_nothing_configured_runs_its_own_redis_on_sqlite_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    run = DemoRun(tmp_path, _sqlite_url(tmp_path), unset=("REDIS_URL",))
    try:
        output = run.wait_for_output("running until Ctrl-C", timeout_s=90)
        port = int(output.split("own redis-server on 127.0.0.1:")[1].split()[0])
        run.wait_until_collecting()
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout_s=60) == 0
        assert _marked_processes(run.mark) == []
    finally:
        run.kill_leftovers()
    assert "received SIGTERM" in run.output()
    assert _summary_of(run)["quotes"] > 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()
    assert redis.Redis.from_url(settings.REDIS_URL).ping()  # the machine's own Redis was left alone


def _moves(seed: int, after_ms: int, before_ms: int) -> list[tuple[int, int]]:
    """(start, end) of each time binance or kraken moves MOVE_BPS or more away from the market
    for MOVE_MS or longer, starting after `after_ms` and before `before_ms`, by start. A move
    already under way at `after_ms` is not one of them."""
    moves = []
    for venue in LIVE_VENUES:
        moved_since: int | None = None
        for t in range(after_ms, before_ms + MOVE_LOOKAHEAD_MS, MOVE_SAMPLE_MS):
            moved = abs(dislocation_bps(seed, venue, "BTC/USDT", t)) >= MOVE_BPS
            if moved and moved_since is None:
                moved_since = t
            elif not moved and moved_since is not None:
                if after_ms < moved_since < before_ms and t - moved_since >= MOVE_MS:
                    moves.append((moved_since, t))
                moved_since = None
    return sorted(moves)


def _moving_until(seed: int, gap_ms: int, from_ms: int, to_ms: int) -> int:
    """The moment, up to `to_ms`, until which from every moment since `from_ms` a move starts
    within `gap_ms`."""
    since = from_ms
    while since < to_ms:
        starts = [start for start, _ in _moves(seed, since, since + gap_ms)]
        if not starts:
            return since
        since = starts[-1]
    return since


def _seed_moving_often(gap_ms: int, from_ms: int, to_ms: int, tries: int = 100) -> int:
    """A simulation seed under which a move worth trading starts within `gap_ms` of any moment
    between `from_ms` and `to_ms` (or, if none of the first `tries` does, the one that keeps it up
    longest): the simulated market is a pure function of seed and time, so whenever in that span
    the live demo is up, a gap worth trading follows soon."""
    best, best_until = 1, from_ms
    for seed in range(1, tries + 1):
        until = _moving_until(seed, gap_ms, from_ms, to_ms)
        if until >= to_ms:
            return seed
        if until > best_until:
            best, best_until = seed, until
    return best


def _orders(database_url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT client_order_id, venue_order_id, status FROM trading_order").fetchall()


def _all_answered(orders: list[tuple[str, str, str]]) -> bool:
    """Some orders, and every one of them answered by the emulator with its own id."""
    return bool(orders) and all(venue_order_id for _, venue_order_id, _ in orders)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.slow
def test_live_demo_trades_real_orders_on_the_emulator_with_keys_only_its_own(
    tmp_path: Path, fresh_database: str
) -> None:
    started_ms = _now_ms()
    seed = _seed_moving_often(MOVE_EVERY_MS, started_ms, started_ms + round(scaled(LIVE_DEMO_UP_S) * 1000))
    run = DemoRun(
        tmp_path, fresh_database, REDIS_URL=settings.REDIS_URL, DEMO_MODE="live", SIMULATION_SEED=str(seed)
    )
    with run.cleaned_up():
        run.wait_for(run.trading, "quotes and a listening listener", Deadline(2 * LIVE_DEMO_UP_S))
        # the emulator's venues stream their books, each live once its first book is in
        wait_until(
            lambda: all(f"{venue}: stream live" in run.log("streamer") for venue in LIVE_VENUES),
            timeout=LIVE_DEMO_UP_S,
            what="both venues' streams live",
        )
        up_ms = _now_ms()
        moves = _moves(seed, up_ms, up_ms + MOVE_SEARCH_MS)
        assert moves, f"seed {seed}: no move in the {MOVE_SEARCH_MS // 1000} s after the demo came up"
        _, move_ends_ms = moves[0]
        wait_until(
            lambda: _all_answered(_orders(fresh_database)),
            timeout=30,
            wall_seconds=(move_ends_ms - up_ms) / 1000,
            what="orders answered by the emulator, after the market's next move",
        )
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout_s=60) == 0
        assert _marked_processes(run.mark) == []
    output = run.output()
    assert "exchange emulator: binance and kraken on http://127.0.0.1:" in output
    with psycopg.connect(fresh_database) as conn:
        venues = conn.execute("SELECT name, kind, enabled FROM trading_venue ORDER BY name").fetchall()
        feeds = conn.execute("SELECT DISTINCT feed FROM trading_venue WHERE enabled").fetchall()
        modes = conn.execute("SELECT DISTINCT mode FROM trading_trade").fetchall()
        trades, pnl = conn.execute(
            "SELECT count(*), coalesce(sum(realized_pnl), 0) FROM trading_trade"
        ).fetchone()
    assert venues == [("binance", "ccxt", True), ("kraken", "ccxt", True)]
    assert feeds == [("stream",)]
    # every order went to the emulator and came back with its id there; every trade is live
    orders = _orders(fresh_database)
    assert _all_answered(orders), orders
    assert modes in ([("live",)], [])
    assert (_summary_of(run)["trades"], Decimal(_summary_of(run)["pnl"])) == (trades, pnl)
    logs = output + "".join(path.read_text(errors="replace") for path in (tmp_path / "logs").glob("*.log"))
    assert "trading mode: LIVE" in run.log("worker")
    assert "demo-binance-" not in logs  # the run's API keys (and their secrets) are in no log
    assert "demo-kraken-" not in logs
