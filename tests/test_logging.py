"""Logs: JSON lines, one correlation id per opportunity across processes, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, Child, child_env, client_id, fund, make_strategy, make_venue
from tests.deadlines import scaled, wait_until
from tests.quotes import CHEAP, DEAR, book, publish
from trading import pubsub
from trading.clock import now_ms
from trading.listener import Listener
from trading.models import Opportunity, Trade
from trading.observability.logs import MASK, correlation
from trading.tasks import collect_venue

log = logging.getLogger("trading.test")


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What this process's configured console handler writes, while the test runs."""
    [handler] = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every log line of a process's output, parsed; a line that is not JSON fails the test."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --- correlation ids ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_correlation_id_follows_an_opportunity_from_dispatch_to_its_trade(
    redis_client: redis.Redis, celery_worker: Child, console: io.StringIO
) -> None:
    fund(make_venue("alpha"), BTC="0", USDT="100000")
    fund(make_venue("bravo"), BTC="2", USDT="0")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"), ttl_ms=60_000)
    listener = Listener(redis_client)
    listener.load_strategy()
    cheap, dear = book("alpha", *CHEAP, seq=1), book("bravo", *DEAR, seq=1)
    publish(redis_client, cheap, dear)  # the latest books the worker fills against

    for quote in (cheap, dear):
        listener.on_price(pubsub.encode_quote(quote), now_ms())

    wait_until(lambda: Opportunity.objects.filter(status="executed").exists(), what="an executed trade")
    opportunity = Opportunity.objects.get()
    story = f"opp-{opportunity.pk}"
    listener_lines = json_lines(console.getvalue())
    worker_lines = json_lines(celery_worker.output())
    told = [line["message"] for line in listener_lines + worker_lines if line.get("correlation_id") == story]
    assert any(f"opportunity {opportunity.pk} opened" in message for message in told)
    assert any(f"opportunity {opportunity.pk} dispatched" in message for message in told)
    legs = [client_id(opportunity, "buy"), client_id(opportunity, "sell")]
    assert all(any(f"{leg} filled" in message for message in told) for leg in legs)
    assert any(f"matched of opportunity {opportunity.pk}" in message for message in told)
    assert any(f"opportunity {opportunity.pk} executed" in message for message in told)
    about_it = [line for line in worker_lines if any(leg in line["message"] for leg in legs)]
    assert about_it
    assert all(line["correlation_id"] == story for line in about_it)
    assert Trade.objects.filter(opportunity=opportunity).exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_task_sent_under_a_correlation_id_logs_it_in_the_worker(celery_worker: Child) -> None:
    with correlation("opp-424242"):
        collect_venue.apply_async((999_999,))
    collect_venue.apply_async((999_998,))  # sent outside any correlated work

    celery_worker.wait_for("venue 999998 is gone")
    lines = {line["message"]: line for line in json_lines(celery_worker.output())}
    assert lines["venue 999999 is gone or disabled: nothing to collect"]["correlation_id"] == "opp-424242"
    assert lines["venue 999998 is gone or disabled: nothing to collect"]["correlation_id"] is None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_logs_json_lines_through_the_project_configuration(celery_worker: Child) -> None:
    lines = json_lines(celery_worker.output())

    ready = [line for line in lines if line["message"].endswith("ready.")]
    assert ready
    assert (ready[0]["level"], ready[0]["logger"].split(".")[0]) == ("INFO", "celery")
    assert all({"timestamp", "level", "logger", "message", "correlation_id"} <= set(line) for line in lines)


# --- redaction ------------------------------------------------------------------------------------


def test_settings_secrets_and_url_passwords_never_reach_the_log(settings, console: io.StringIO) -> None:
    settings.SLACK_BOT_TOKEN = "xoxb-1111-2222-topsecret"
    settings.EXCHANGE_KEYS = {"binance": {"apiKey": "AKIA-binance-key", "secret": "binance-secret-42"}}
    settings.BACKUP_DATABASE_URL = "postgres://ops:db-pass-9f3@db.internal:5432/arb"

    log.warning("posting with token %s", settings.SLACK_BOT_TOKEN)
    log.info("connecting to redis://:redis-pw-77@cache.internal:6379/0 and %s", settings.BACKUP_DATABASE_URL)
    log.info("venue keys: %s", settings.EXCHANGE_KEYS)
    log.info("bare password db-pass-9f3 in a message", extra={"detail": "token=xoxb-1111-2222-topsecret"})
    try:
        raise RuntimeError(f"auth failed for {settings.EXCHANGE_KEYS['binance']['secret']}")
    except RuntimeError:
        log.exception("venue call failed")

    lines = json_lines(console.getvalue())
    text = json.dumps(lines)
    for secret in (
        "xoxb-1111-2222-topsecret",
        "AKIA-binance-key",
        "binance-secret-42",
        "db-pass-9f3",
        "redis-pw-77",
    ):
        assert secret not in text
    messages = [line["message"] for line in lines]
    assert f"posting with token {MASK}" in messages
    assert (
        f"connecting to redis://:{MASK}@cache.internal:6379/0 and postgres://ops:{MASK}@db.internal:5432/arb"
        in messages
    )
    assert lines[3]["detail"] == f"token={MASK}"
    assert f"auth failed for {MASK}" in lines[4]["exc_info"]


def test_a_command_logs_json_with_environment_secrets_masked(tmp_path) -> None:
    script = (
        "import logging, os; "
        "logging.getLogger('trading.ops').warning('key %s via %s', os.environ['EXCHANGE_API_KEY'], "
        "os.environ['REDIS_URL'])"
    )
    env = child_env(EXCHANGE_API_KEY="k-live-5e5e5e", REDIS_URL="redis://:env-redis-pw@127.0.0.1:6379/0")

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )

    [line] = [json.loads(line) for line in result.stdout.splitlines() if "trading.ops" in line]
    assert line["message"] == f"key {MASK} via redis://:{MASK}@127.0.0.1:6379/0"
    assert line["level"] == "WARNING"
    assert "k-live-5e5e5e" not in result.stdout + result.stderr
    assert "env-redis-pw" not in result.stdout + result.stderr


def test_ordinary_values_are_not_masked(settings, console: io.StringIO) -> None:
    # The Redis key prefix sits under the broker's `global_keyprefix` option: a key, not a secret.
    log.info("queue %spending has %s quotes on venue alpha", settings.ARB_PREFIX, 12)

    [line] = json_lines(console.getvalue())
    assert line["message"] == f"queue {settings.ARB_PREFIX}pending has 12 quotes on venue alpha"
