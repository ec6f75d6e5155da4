"""Monitoring end to end with real PostgreSQL and Redis: each check opens one alert for its
condition, keeps it while the condition lasts, resolves it when the condition clears, and each
opening and resolution reaches Slack and Telegram (local stand-ins) exactly once."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
import redis
from django.utils import timezone

from devtools.emulator import Emulator, emulate
from tests.chat_servers import Chat, chat_fixture, eager_tasks_fixture  # noqa: F401
from tests.conftest import Child, child_env, make_strategy, make_venue
from tests.deadlines import scaled, wait_until
from trading import alerts, collector, monitoring
from trading.clock import now_ms
from trading.core.risk import max_drawdown
from trading.models import Alert, Opportunity, Trade, Venue
from trading.observability import heartbeats
from trading.pubsub import Names, latest_books
from trading.tasks import monitor_check

pytestmark = pytest.mark.django_db


# --- the pure rules -------------------------------------------------------------------------------


def test_drawdown_is_the_largest_fall_from_a_running_peak() -> None:
    pnls = [Decimal(p) for p in ("100", "-30", "50", "-150", "20")]
    assert max_drawdown(pnls) == Decimal("150")  # running 100, 70, 120, -30, -10: peak 120, trough -30
    assert max_drawdown([Decimal("-40"), Decimal("10")]) == Decimal("40")
    assert max_drawdown([]) == 0


# --- the checks, the alerts and their notifications -----------------------------------------------


def beat(client: redis.Redis, *processes: str) -> None:
    """Live heartbeats for these processes ("listener:main", "worker:w1@host")."""
    for process in processes:
        heartbeats.write(client, process, {"at_ms": now_ms()}, ttl=15)


@pytest.fixture
def healthy(redis_client: redis.Redis) -> redis.Redis:
    """A listener and a worker alive, so only the condition a test creates raises an alert."""
    beat(redis_client, "listener:main", "worker:w1@host")
    return redis_client


def opened_and_resolved(chat: Chat, about: str = "") -> list[str]:
    """Titles of the Telegram messages received (those mentioning `about`), oldest first."""
    return [text.splitlines()[0] for text in chat.telegram.texts() if about in text]


def check(django_capture_on_commit_callbacks) -> alerts.Transitions:
    with django_capture_on_commit_callbacks(execute=True):
        changes = monitoring.run_once()
    assert changes is not None
    return changes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def exchange() -> Iterator[Emulator]:
    emulator = emulate("binance", port=free_port()).start()
    yield emulator
    emulator.stop()


def book_age_ms(client: redis.Redis, venue: str) -> int:
    """How old the venue's latest BTC/USDT book is, by the time it was received."""
    return now_ms() - latest_books(client, "BTC/USDT")[venue].received_ts


@pytest.mark.usefixtures("eager_tasks")
def test_a_stopped_venue_opens_one_stale_alert_then_resolves_when_it_answers_again(
    exchange: Emulator, healthy: redis.Redis, chat: Chat, settings, django_capture_on_commit_callbacks
) -> None:
    settings.ALERT_CLEAR_SECONDS = 0
    settings.COLLECT_TIMEOUT_MS = 500
    # Long enough that a fresh book is still fresh two checks later, on however slow a machine.
    age_limit_ms = round(scaled(2) * 1000)
    stale_subject = f"Venue binance stale: no BTC/USDT book within {age_limit_ms} ms"
    make_strategy(symbols=["BTC/USDT"])
    binance = make_venue(
        "binance",
        kind=Venue.Kind.CCXT,
        ccxt_id="binance",
        api_url=exchange.url_for("binance"),
        max_quote_age_ms=age_limit_ms,
    )
    assert collector.collect_venue(binance.pk) == 1
    assert check(django_capture_on_commit_callbacks).opened == []

    exchange.stop()
    wait_until(lambda: book_age_ms(healthy, "binance") > age_limit_ms, what="the last book past its age")
    for _ in range(3):
        assert collector.collect_venue(binance.pk) == 0
        check(django_capture_on_commit_callbacks)

    stale = Alert.objects.get(key="venue_stale:binance")
    assert stale.is_open
    assert stale.count == 3
    assert stale.subject == stale_subject
    # The failures also raise a venue_errors alert; of staleness there is exactly one message.
    assert opened_and_resolved(chat, "stale") == [f"CRITICAL: {stale_subject}"]

    exchange.start()
    assert collector.collect_venue(binance.pk) == 1
    check(django_capture_on_commit_callbacks)
    check(django_capture_on_commit_callbacks)

    stale.refresh_from_db()
    assert not stale.is_open
    assert Alert.objects.filter(key="venue_stale:binance").count() == 1
    assert opened_and_resolved(chat, "stale") == [f"CRITICAL: {stale_subject}", f"Resolved: {stale_subject}"]
    assert len(chat.slack.messages()) == len(chat.telegram.messages())


@pytest.mark.usefixtures("eager_tasks")
def test_a_venue_failing_in_a_row_raises_an_error_alert(
    exchange: Emulator, healthy: redis.Redis, chat: Chat, settings, django_capture_on_commit_callbacks
) -> None:
    settings.VENUE_ERROR_RATE_LIMIT = 3
    settings.COLLECT_TIMEOUT_MS = 500
    make_strategy(symbols=["BTC/USDT"])
    binance = make_venue(
        "binance", kind=Venue.Kind.CCXT, ccxt_id="binance", api_url=exchange.url_for("binance")
    )
    assert collector.collect_venue(binance.pk) == 1
    exchange.set_fault("binance", status=500)

    for _ in range(2):
        collector.collect_venue(binance.pk)
    assert check(django_capture_on_commit_callbacks).opened == []
    collector.collect_venue(binance.pk)
    [opened] = check(django_capture_on_commit_callbacks).opened

    assert opened.key == "venue_errors:binance"
    assert opened.subject == "Venue binance erring: 3 failures in a row, 0 books rejected"
    assert opened_and_resolved(chat) == [f"WARNING: {opened.subject}"]


@pytest.mark.usefixtures("eager_tasks")
@pytest.mark.parametrize(
    ("kind", "key", "subject"),
    [
        ("listener", "listener_missing", "No listener heartbeat: prices are not being decided"),
        ("worker", "workers_missing", "No Celery worker heartbeat: nothing collects or trades"),
    ],
)
def test_a_missing_heartbeat_opens_an_alert_that_a_new_heartbeat_resolves(
    kind: str,
    key: str,
    subject: str,
    redis_client: redis.Redis,
    chat: Chat,
    settings,
    django_capture_on_commit_callbacks,
) -> None:
    settings.ALERT_CLEAR_SECONDS = 0
    beat(redis_client, "listener:main" if kind == "worker" else "worker:w1@host")

    [opened] = check(django_capture_on_commit_callbacks).opened
    beat(redis_client, f"{kind}:one")
    [resolved] = check(django_capture_on_commit_callbacks).resolved

    assert (opened.key, opened.pk) == (key, resolved.pk)
    assert opened_and_resolved(chat) == [f"CRITICAL: {subject}", f"Resolved: {subject}"]


@pytest.mark.usefixtures("eager_tasks")
def test_a_flapping_condition_keeps_one_alert_and_notifies_once(
    redis_client: redis.Redis, chat: Chat, settings, django_capture_on_commit_callbacks
) -> None:
    settings.ALERT_CLEAR_SECONDS = 60
    beat(redis_client, "worker:w1@host")
    listener_key = Names(settings.ARB_PREFIX).heartbeat("listener:main")

    for _ in range(3):
        check(django_capture_on_commit_callbacks)  # missing
        beat(redis_client, "listener:main")
        check(django_capture_on_commit_callbacks)  # back, but not for long enough to resolve
        redis_client.delete(listener_key)

    [alert] = Alert.objects.filter(key="listener_missing")
    assert alert.is_open
    assert alert.count == 3
    assert opened_and_resolved(chat) == ["CRITICAL: No listener heartbeat: prices are not being decided"]


def test_a_queue_backlog_past_the_limit_opens_an_alert(
    healthy: redis.Redis, settings, django_capture_on_commit_callbacks
) -> None:
    settings.QUEUE_BACKLOG_LIMIT = 3
    for _ in range(4):  # no worker consumes: they wait in the broker's `default` list
        monitor_check.delay()

    [opened] = check(django_capture_on_commit_callbacks).opened

    assert opened.key == "queue_backlog:default"
    assert opened.subject == "Queue default backlog: 4 tasks waiting (limit 3)"


def trade(pnl: str) -> Trade:
    venue = Venue.objects.first() or make_venue("alpha")
    now = timezone.now()
    opportunity = Opportunity.objects.create(
        symbol="BTC/USDT",
        buy_venue=venue,
        sell_venue=venue,
        status=Opportunity.Status.EXECUTED,
        detected_at=now,
        last_seen_at=now,
    )
    return Trade.objects.create(
        opportunity=opportunity,
        symbol="BTC/USDT",
        buy_venue=venue,
        sell_venue=venue,
        amount=Decimal("0.1"),
        expected_pnl=Decimal(pnl),
        realized_pnl=Decimal(pnl),
        fees=Decimal(0),
    )


@pytest.mark.usefixtures("eager_tasks")
def test_a_daily_loss_past_its_limit_opens_a_critical_alert(
    healthy: redis.Redis, chat: Chat, settings, django_capture_on_commit_callbacks
) -> None:
    settings.DAILY_LOSS_LIMIT = "500"
    settings.MAX_DRAWDOWN = "10000"
    trade("-300")
    assert check(django_capture_on_commit_callbacks).opened == []
    trade("-250")

    [opened] = check(django_capture_on_commit_callbacks).opened

    assert (opened.key, opened.severity) == ("daily_loss", Alert.Severity.CRITICAL)
    assert opened_and_resolved(chat) == ["CRITICAL: Daily loss 550.00 past the limit of 500.00"]


def test_a_drawdown_past_its_limit_opens_an_alert_even_with_the_day_in_profit(
    healthy: redis.Redis, settings, django_capture_on_commit_callbacks
) -> None:
    settings.MAX_DRAWDOWN = "600"
    for pnl in ("900", "-400", "-300"):
        trade(pnl)

    [opened] = check(django_capture_on_commit_callbacks).opened

    assert opened.key == "drawdown"
    assert opened.subject == "Drawdown 700.00 today past the limit of 600.00"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_beat_task_run_by_a_real_worker_opens_the_alert_and_notifies(
    redis_client: redis.Redis, chat: Chat, spawn: Callable[..., Child]
) -> None:
    worker = spawn(
        sys.executable,
        *("-m", "celery", "-A", "arbsite", "worker", "-Q", "default", "-c", "1", "-P", "solo"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO", "-n", "monitor@%h"),
        name="worker",
        env=child_env(**chat.settings_env()),
    )
    worker.wait_for("ready.", timeout=60)

    monitor_check.delay()

    [slack] = chat.slack.wait_for(1, timeout=30)
    assert slack.body["text"].startswith("CRITICAL: No listener heartbeat")
    assert Alert.objects.get(key="listener_missing").is_open
    assert "notifications: slack is on" in worker.output()


@pytest.mark.usefixtures("eager_tasks")
def test_an_incident_stays_open_through_monitoring_runs_until_a_person_resolves_it(
    redis_client: redis.Redis, chat: Chat, settings, django_capture_on_commit_callbacks, admin_client
) -> None:
    settings.ALERT_CLEAR_SECONDS = 0
    beat(redis_client, "worker:w1@host")
    beat(redis_client, "listener:main")
    incident = alerts.Condition("hedge:opp-7", alerts.CRITICAL, "Hedge left 0.1 BTC open")
    with django_capture_on_commit_callbacks(execute=True):
        alerts.raise_alert(incident, timezone.now())

    for _ in range(3):
        check(django_capture_on_commit_callbacks)
    assert Alert.objects.get(key="hedge:opp-7").is_open

    alert = Alert.objects.get(key="hedge:opp-7")
    admin_client.post("/admin/trading/alert/", {"action": "resolve", "_selected_action": [alert.pk]})
    assert not Alert.objects.get(key="hedge:opp-7").is_open
