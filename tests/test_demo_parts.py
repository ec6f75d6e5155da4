"""The demo's parts: its data setup, its supervisor and its summary."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from devtools.demo.environment import child_environment
from devtools.demo.setup import setup_demo
from devtools.demo.status import Counts, HoldingsChange, holdings_line, summary
from devtools.demo.supervisor import MAX_BACKOFF_S, ProcessSpec, Supervisor, next_backoff
from trading.models import Balance, StrategyConfig, Venue

from .conftest import ROOT, make_strategy
from .deadlines import scaled, wait_until

# --- setup_demo -------------------------------------------------------------------------------


def _setup_demo(capsys: pytest.CaptureFixture[str]) -> str:
    call_command("setup_demo")
    return capsys.readouterr().out


@pytest.mark.django_db
def test_setup_demo_creates_funded_simulated_venues_a_strategy_and_an_admin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEMO_ADMIN_USER", "boss")
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "correct horse")
    out = _setup_demo(capsys)
    venues = Venue.objects.filter(kind=Venue.Kind.SIMULATED)
    assert venues.count() == 4
    assert len({venue.taker_fee for venue in venues}) == 4
    for venue in venues:
        free = {b.asset: b.free for b in Balance.objects.filter(venue=venue)}
        assert free == {"BTC": Decimal(1), "USDT": Decimal(30_000)}
    strategy = StrategyConfig.objects.get(active=True)
    assert (strategy.symbols, strategy.trade_size) == (["BTC/USDT"], Decimal("0.05"))
    user = authenticate(username="boss", password="correct horse")
    assert user is not None
    assert user.is_superuser
    assert user.is_staff
    assert "correct horse" not in out  # a password the operator chose is never echoed


@pytest.mark.django_db
def test_setup_demo_again_keeps_traded_balances_and_an_active_strategy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    own = make_strategy(version=3, symbols=["BTC/USD"])
    _setup_demo(capsys)
    Balance.objects.filter(venue__name="sim-alpha", asset="BTC").update(free=Decimal("0.95"))
    _setup_demo(capsys)
    assert Venue.objects.count() == 4
    assert Balance.objects.count() == 8
    assert Balance.objects.get(venue__name="sim-alpha", asset="BTC").free == Decimal("0.95")
    assert list(StrategyConfig.objects.values_list("pk", flat=True)) == [own.pk]


@pytest.mark.django_db
def test_the_live_demo_trades_on_the_emulator_venues_and_the_paper_demo_gets_its_own_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _setup_demo(capsys)
    Balance.objects.filter(venue__name="sim-alpha", asset="BTC").update(free=Decimal("0.95"))

    setup_demo("admin", None, emulator_root="http://127.0.0.1:8600")
    Balance.objects.filter(venue__name="kraken", asset="BTC").update(free=Decimal("0.5"))
    setup_demo("admin", None, emulator_root="http://127.0.0.1:8601")  # a new run: a new emulator

    enabled = dict(Venue.objects.filter(enabled=True).values_list("name", "api_url"))
    assert enabled == {"binance": "http://127.0.0.1:8601/binance", "kraken": "http://127.0.0.1:8601/kraken"}
    # funded as the fresh emulator funds its accounts, whatever the last run left
    assert Balance.objects.get(venue__name="kraken", asset="BTC").free == Decimal(1)

    _setup_demo(capsys)
    assert set(Venue.objects.filter(enabled=True).values_list("name", flat=True)) == {
        "sim-alpha",
        "sim-bravo",
        "sim-charlie",
        "sim-delta",
    }
    assert Balance.objects.get(venue__name="sim-alpha", asset="BTC").free == Decimal("0.95")


@pytest.mark.django_db
def test_the_live_demo_venues_stream_from_the_emulators_websocket_root() -> None:
    setup_demo("admin", None, emulator_root="http://127.0.0.1:8600", stream_root="ws://127.0.0.1:8602")

    streamed = Venue.objects.filter(enabled=True).values_list("name", "feed", "stream_url")
    assert set(streamed) == {
        ("binance", Venue.Feed.STREAM, "ws://127.0.0.1:8602/binance"),
        ("kraken", Venue.Feed.STREAM, "ws://127.0.0.1:8602/kraken"),
    }

    setup_demo("admin", None, emulator_root="http://127.0.0.1:8600")  # an emulator without streams
    assert set(Venue.objects.filter(enabled=True).values_list("feed", "stream_url")) == {
        (Venue.Feed.POLL, "")
    }


@pytest.mark.django_db
def test_setup_demo_shows_a_generated_admin_password_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEMO_ADMIN_USER", raising=False)
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)
    first = _setup_demo(capsys)
    password = first.split("password (shown once): ")[1].split()[0]
    assert authenticate(username="admin", password=password) is not None
    second = _setup_demo(capsys)
    assert "password" not in second
    assert authenticate(username="admin", password=password) is not None


# --- supervisor ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _python(name: str, code: str) -> ProcessSpec:
    return ProcessSpec(name, [sys.executable, "-c", code], dict(os.environ))


def _alive(pid: int) -> bool:
    """True while `pid` runs; a killed process waiting to be reaped (a zombie) is not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_exit(supervisor: Supervisor, name: str) -> None:
    proc = supervisor.children[name].proc
    assert proc is not None
    proc.wait(timeout=scaled(10))


def test_backoff_doubles_up_to_a_cap_and_resets_after_a_stable_run() -> None:
    assert next_backoff(1.0, ran_for_s=0.5) == 2.0
    assert next_backoff(MAX_BACKOFF_S, ran_for_s=0.5) == MAX_BACKOFF_S
    assert next_backoff(16.0, ran_for_s=3_600) == 1.0


def test_a_child_that_dies_is_restarted_after_its_backoff(tmp_path: Path) -> None:
    clock, lines = FakeClock(), []
    supervisor = Supervisor(tmp_path, ROOT, report=lines.append, clock=clock)
    supervisor.start(_python("flaky", "print('up', flush=True); raise SystemExit(3)"))
    _wait_exit(supervisor, "flaky")
    supervisor.check()
    assert "flaky exited with code 3" in lines[0]
    clock.now += 0.5
    supervisor.check()
    assert supervisor.restart_counts == {"flaky": 0}  # still backing off
    clock.now += 1.0
    supervisor.check()
    assert supervisor.restart_counts == {"flaky": 1}
    _wait_exit(supervisor, "flaky")
    supervisor.stop_all(grace_s=5)
    assert (tmp_path / "flaky.log").read_text().count("up\n") == 2


def test_stop_leaves_no_process_of_a_group_behind(tmp_path: Path) -> None:
    """Even a grandchild that ignores SIGTERM is gone after the stop."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    supervisor = Supervisor(tmp_path, ROOT, report=lambda line: None)
    supervisor.start(_python("parent", code))
    grandchild = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 10, "the grandchild"))
    supervisor.stop_all(grace_s=1)
    wait_until(lambda: not _alive(grandchild), 2, "the grandchild killed")  # SIGKILL lands asynchronously


def test_stop_lets_a_child_finish_the_work_its_own_children_are_doing(tmp_path: Path) -> None:
    """As a Celery worker's warm shutdown does: SIGTERM reaches the child alone, which waits for
    its grandchild's job (the grandchild does not handle SIGTERM) before it exits."""
    done, started = tmp_path / "done", tmp_path / "started"
    job = f"import time; open({str(started)!r}, 'w').close(); time.sleep(1); open({str(done)!r}, 'w').close()"
    code = (
        "import signal, subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', {job!r}]); "
        "signal.signal(signal.SIGTERM, lambda *_: (child.wait(), sys.exit(0))); time.sleep(60)"
    )
    supervisor = Supervisor(tmp_path, ROOT, report=lambda line: None)
    supervisor.start(_python("worker", code))
    wait_until(started.exists, 10, "the job started")
    supervisor.stop_all(grace_s=30)
    assert done.exists()


def test_stop_all_stops_first_what_makes_new_work(tmp_path: Path) -> None:
    """Children stopped in stages note their names as they are told to stop: `first` before the
    others, although it was started after them."""
    marks, names = tmp_path / "marks", ("other", "first")
    supervisor = Supervisor(tmp_path, ROOT, report=lambda line: None)
    for name in names:
        note = f"open({str(marks)!r}, 'a').write({name!r} + chr(10))"
        up = tmp_path / f"{name}.up"
        code = (
            "import signal, sys, time; "
            f"signal.signal(signal.SIGTERM, lambda *_: ({note}, sys.exit(0))); "
            f"open({str(up)!r}, 'w').close(); time.sleep(60)"
        )
        supervisor.start(_python(name, code))
    wait_until(lambda: all((tmp_path / f"{name}.up").exists() for name in names), 10, "both up")
    supervisor.stop_all(grace_s=10, first=("first",))
    assert marks.read_text().split() == ["first", "other"]


def test_children_get_debug_a_per_run_secret_and_the_chosen_redis_but_not_passwords() -> None:
    parent = {"DEMO_ADMIN_PASSWORD": "a", "FLOWER_PASSWORD": "b", "FLOWER_USER": "c", "PATH": "/bin"}
    env = child_environment(parent, "redis://127.0.0.1:4242/0")
    assert env["REDIS_URL"] == "redis://127.0.0.1:4242/0"
    assert env["DEBUG"] == "1"
    assert len(env["SECRET_KEY"]) > 40
    assert not {"DEMO_ADMIN_PASSWORD", "FLOWER_PASSWORD", "FLOWER_USER"} & set(env)
    assert child_environment(parent, None)["SECRET_KEY"] != env["SECRET_KEY"]
    kept = child_environment({"SECRET_KEY": "mine", "DEBUG": "0", "REDIS_URL": "redis://x/1"}, None)
    assert (kept["SECRET_KEY"], kept["DEBUG"], kept["REDIS_URL"]) == ("mine", "0", "redis://x/1")


def test_summary_is_one_json_line_with_exact_pnl_and_the_change_in_holdings() -> None:
    counts = Counts(120, 7, 2, 5, Decimal("12.340000000000"), below_expected=1)
    held = HoldingsChange(
        {"BTC": Decimal("0E-12"), "USDT": Decimal("12.340000000000")}, "USDT", Decimal("12.34")
    )
    line = summary(counts, held, 31.26, {"worker": 1})
    assert "\n" not in line
    assert json.loads(line) == {
        "quotes": 120,
        "opportunities": 7,
        "rejected": 2,
        "trades": 5,
        "below_expected": 1,
        "pnl": "12.34",
        "holdings_change": {"BTC": "0", "USDT": "12.34"},
        "holdings_value": "12.34",
        "seconds": 31.3,
        "restarts": {"worker": 1},
    }
    assert holdings_line(held) == "venues' holdings changed by BTC +0, USDT +12.34: +12.34 USDT at the mid"
