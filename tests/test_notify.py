"""Notifications through the real slack-sdk client and real HTTP to local Slack and Telegram
stand-ins: what a trade, a leg failure and the daily summary say, dedup and rate limits, channels
that are off, and a failing channel retried then given up by a real worker without blocking trades.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.chat_servers import SLACK_TOKEN, TELEGRAM_TOKEN, Chat, chat_fixture, eager_tasks_fixture  # noqa: F401
from tests.conftest import Child, child_env, make_venue, start_worker
from tests.deadlines import wait_until
from tests.quotes import open_known_gap
from trading import execution
from trading.models import Opportunity, Order, Trade
from trading.notify import Message, TemporaryNotifyError, announce_channels, deliver, enabled_channels, rules
from trading.tasks import execute_opportunity


def slack_facts(received_body: dict) -> dict[str, str]:
    """The Slack message's fields as {label: value}, read back from its blocks."""
    facts = {}
    for block in received_body["blocks"]:
        for field in block.get("fields", []):
            label, value = field["text"].split("\n", 1)
            facts[label.strip("*")] = value
    return facts


@pytest.mark.django_db
def test_an_executed_trade_is_announced_with_its_legs_and_expected_against_realized_pnl(
    chat: Chat, eager_tasks, market: None, redis_client, django_capture_on_commit_callbacks
) -> None:
    opportunity = open_known_gap(redis_client)
    with django_capture_on_commit_callbacks(execute=True):
        assert execution.execute_opportunity(opportunity.pk) == "executed"
    trade = Trade.objects.get()

    [slack] = chat.slack.wait_for(1)
    [telegram] = chat.telegram.wait_for(1)

    assert slack.path == "/api/chat.postMessage"
    assert slack.headers["Authorization"] == f"Bearer {SLACK_TOKEN}"
    assert slack.body["channel"] == "#trading"
    assert slack.body["blocks"][0]["text"]["text"] == f"Trade #{trade.pk} BTC/USDT: +19.95 realized"
    facts = slack_facts(slack.body)
    assert facts["Buy leg"] == "buy 0.5/0.5 on alpha @ 30000, fee 15 (filled)"
    assert facts["Sell leg"] == "sell 0.5/0.5 on bravo @ 30100, fee 15.05 (filled)"
    assert (facts["Expected PnL"], facts["Realized PnL"]) == ("+19.95", "+19.95")
    assert telegram.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert telegram.body["chat_id"] == "-1001"
    assert "Buy leg: buy 0.5/0.5 on alpha @ 30000" in telegram.body["text"]
    assert "Expected PnL: +19.95\nRealized PnL: +19.95" in telegram.body["text"]


def failed_opportunity() -> Opportunity:
    """An opportunity whose sell leg was rejected after the buy filled."""
    alpha, bravo = make_venue("alpha"), make_venue("bravo")
    now = timezone.now()
    opportunity = Opportunity.objects.create(
        symbol="BTC/USDT",
        buy_venue=alpha,
        sell_venue=bravo,
        status=Opportunity.Status.FAILED,
        reason="leg failure: bought 0.5 of 0.5, sold 0 of 0.5",
        detected_at=now,
        last_seen_at=now,
    )
    for venue, side, filled, status in ((alpha, "buy", "0.5", "filled"), (bravo, "sell", "0", "rejected")):
        Order.objects.create(
            opportunity=opportunity,
            venue=venue,
            symbol="BTC/USDT",
            side=side,
            role=side,
            client_order_id=f"arb{opportunity.pk}-{side}",
            price=Decimal("30000"),
            amount=Decimal("0.5"),
            filled=Decimal(filled),
            average_price=Decimal("30000") if status == "filled" else None,
            status=status,
        )
    return opportunity


@pytest.mark.django_db
def test_a_leg_failure_names_both_legs_and_the_reason(chat: Chat, eager_tasks, redis_client) -> None:
    opportunity = failed_opportunity()

    assert rules.leg_failed(opportunity.pk) == ["slack", "telegram"]

    [telegram] = chat.telegram.wait_for(1)
    assert telegram.body["text"].splitlines() == [
        f"Leg failure on opportunity #{opportunity.pk} BTC/USDT",
        "Buy leg: buy 0.5/0.5 on alpha @ 30000, fee 0 (filled)",
        "Sell leg: sell 0/0.5 on bravo @ limit 30000, fee 0 (rejected)",
        "Reason: leg failure: bought 0.5 of 0.5, sold 0 of 0.5",
    ]


@pytest.mark.django_db
def test_the_same_event_twice_within_the_window_is_sent_once(
    chat: Chat, eager_tasks, redis_client, settings
) -> None:
    settings.NOTIFY_DEDUP_SECONDS = 60
    opportunity = failed_opportunity()

    assert rules.leg_failed(opportunity.pk) == ["slack", "telegram"]
    assert rules.leg_failed(opportunity.pk) == []

    # Tasks run eagerly: whatever was sent has been received by now.
    assert len(chat.slack.messages()) == 1
    assert len(chat.telegram.messages()) == 1


@pytest.mark.django_db
def test_past_the_rate_limit_further_messages_are_dropped(
    chat: Chat, eager_tasks, redis_client, settings
) -> None:
    settings.NOTIFY_MAX_PER_MINUTE = 2
    sent = [rules.publish(Message(f"event {i}"), f"event:{i}") for i in range(4)]

    assert sent[:2] == [["slack", "telegram"]] * 2
    assert sent[3] == []
    assert [text.splitlines()[0] for text in chat.telegram.texts()][:2] == ["event 0", "event 1"]


@pytest.mark.django_db
def test_the_daily_summary_counts_the_days_trades_and_pnl(chat: Chat, eager_tasks, redis_client) -> None:
    opportunity = failed_opportunity()
    for pnl in ("12.5", "-2.5"):
        trade = Trade.objects.create(
            opportunity=Opportunity.objects.create(
                symbol="BTC/USDT",
                buy_venue=opportunity.buy_venue,
                sell_venue=opportunity.sell_venue,
                status=Opportunity.Status.EXECUTED,
                detected_at=timezone.now(),
                last_seen_at=timezone.now(),
            ),
            symbol="BTC/USDT",
            buy_venue=opportunity.buy_venue,
            sell_venue=opportunity.sell_venue,
            amount=Decimal("0.1"),
            expected_pnl=Decimal("6"),
            realized_pnl=Decimal(pnl),
            fees=Decimal("1"),
        )

    rules.daily_summary(trade.created_at.date())

    [telegram] = chat.telegram.wait_for(1)
    lines = telegram.body["text"].splitlines()
    assert lines[0] == f"Daily summary for {trade.created_at.date().isoformat()}"
    assert "Trades: 2" in lines
    assert "Realized PnL: +10.00" in lines
    assert "Expected PnL: +12.00" in lines
    assert "Failed opportunities: 1" in lines
    assert rules.daily_summary(trade.created_at.date() - timedelta(days=1)) == ["slack", "telegram"]


@pytest.mark.django_db
def test_a_channel_without_configuration_is_off_and_says_so_without_its_token(
    chat: Chat, eager_tasks, redis_client, settings, caplog
) -> None:
    settings.TELEGRAM_CHAT_ID = ""
    with caplog.at_level(logging.INFO, logger="trading.notify"):
        announce_channels()

    assert enabled_channels() == ["slack"]
    assert "notifications: slack is on" in caplog.text
    assert "notifications: telegram is off" in caplog.text
    assert rules.publish(Message("hello"), "hello") == ["slack"]
    assert len(chat.slack.wait_for(1)) == 1
    assert chat.telegram.messages() == []
    assert SLACK_TOKEN not in caplog.text
    assert TELEGRAM_TOKEN not in caplog.text


def test_a_server_error_is_temporary_and_a_refusal_is_permanent(chat: Chat, caplog) -> None:
    chat.slack.status = 500
    chat.telegram.status = 400

    with pytest.raises(TemporaryNotifyError, match="slack answered 500"):
        deliver("slack", Message("hello"))
    assert deliver("telegram", Message("hello")) is False

    assert "refused by telegram" in caplog.text
    assert TELEGRAM_TOKEN not in caplog.text


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_failing_channel_is_retried_then_given_up_while_trades_and_other_channels_go_on(
    chat: Chat, market: None, redis_client, spawn: Callable[..., Child]
) -> None:
    chat.slack.status = 500
    worker = start_worker(spawn, env=child_env(NOTIFY_MAX_RETRIES="2", **chat.settings_env()))
    assert rules.publish(Message("venue down", severity="critical"), "first") == ["slack", "telegram"]

    opportunity = open_known_gap(redis_client)
    execute_opportunity.delay(opportunity.pk)

    telegram = chat.telegram.wait_for(2, timeout=30)
    assert telegram[0].body["text"] == "venue down"
    assert Trade.objects.filter(opportunity=opportunity).exists()
    # The first slack message, then the trade's: each tried once and retried twice (after 1 s, 2 s),
    # then given up, so nothing more comes.
    wait_until(
        lambda: worker.output().count("raised unexpected: TemporaryNotifyError") == 2,
        what="both slack messages given up",
    )
    assert len(chat.slack.messages()) == 6
    assert "Retry in 1s" in worker.output()
    assert "TemporaryNotifyError" in worker.output()
    assert SLACK_TOKEN not in worker.output()
