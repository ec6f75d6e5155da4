"""Risk limits and the kill switch on the paper execution path, with real PostgreSQL and Redis:
each limit rejects a trade with its reason before any order is recorded or sent, and the kill
switch stops every trade, alerts, and holds until a person re-arms it."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.chat_servers import Chat, chat_fixture, eager_tasks_fixture  # noqa: F401
from tests.conftest import ROOT, child_env, set_limits
from tests.deadlines import scaled
from tests.quotes import open_known_gap
from trading import execution, monitoring, risk_controls
from trading.models import Alert, Balance, KillSwitch, Opportunity, Order, RiskLimits, Trade, Venue
from trading.tasks import monitor_check

pytestmark = pytest.mark.django_db

Status = Opportunity.Status
KILL_SWITCH_ADMIN = reverse("admin:trading_killswitch_changelist")


@pytest.fixture
def detected(market: None, redis_client: redis.Redis) -> Opportunity:
    """The known gap: buy 0.5 BTC on alpha at 30000, sell it on bravo at 30100 (15,050 at stake)."""
    return open_known_gap(redis_client)


def balances() -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    return {(b.venue.name, b.asset): (b.free, b.locked) for b in Balance.objects.select_related("venue")}


def again(opportunity: Opportunity) -> Opportunity:
    """The same gap dispatched once more, as the listener does when it reopens."""
    return Opportunity.objects.create(
        symbol=opportunity.symbol,
        buy_venue=opportunity.buy_venue,
        sell_venue=opportunity.sell_venue,
        status=Status.DISPATCHED,
        strategy=opportunity.strategy,
        detected_at=timezone.now(),
        last_seen_at=timezone.now(),
    )


def assert_rejected_untraded(opportunity: Opportunity, reason: str, before: dict) -> None:
    """Rejected with `reason` (a prefix), no order recorded for it, and no funds moved."""
    opportunity.refresh_from_db()
    assert (opportunity.status, opportunity.reason[: len(reason)]) == (Status.REJECTED, reason)
    assert not Order.objects.filter(opportunity=opportunity).exists()
    assert balances() == before


def record_loss(pnl: str) -> Trade:
    """A trade of earlier today that lost `pnl`."""
    venue = Venue.objects.get(name="alpha")
    now = timezone.now()
    opportunity = Opportunity.objects.create(
        symbol="BTC/USDT",
        buy_venue=venue,
        sell_venue=venue,
        status=Status.EXECUTED,
        detected_at=now,
        last_seen_at=now,
    )
    return Trade.objects.create(
        opportunity=opportunity,
        symbol="BTC/USDT",
        buy_venue=venue,
        sell_venue=venue,
        amount=Decimal("0.1"),
        expected_pnl=Decimal(0),
        realized_pnl=Decimal(pnl),
        fees=Decimal(0),
    )


# --- the limits -----------------------------------------------------------------------------------


def test_a_trade_over_the_notional_limit_from_the_environment_is_rejected(
    detected: Opportunity, settings
) -> None:
    settings.RISK_MAX_TRADE_NOTIONAL = "15000"
    RiskLimits.objects.all().delete()  # the row takes its first values from the environment
    before = balances()

    assert execution.execute_opportunity(detected.pk) == "rejected"

    assert_rejected_untraded(detected, "risk: max_notional 15050 over 15000", before)


def test_a_trade_within_the_limits_goes_through(detected: Opportunity) -> None:
    set_limits(
        max_trade_notional=Decimal(15_050), max_open_exposure=Decimal(15_050), pair_cooldown_seconds=60
    )

    assert execution.execute_opportunity(detected.pk) == "executed"


def test_a_paused_venue_trades_nothing_but_its_gap_is_still_recorded(detected: Opportunity) -> None:
    RiskLimits.current().paused_venues.add(Venue.objects.get(name="bravo"))
    before = balances()

    assert execution.execute_opportunity(detected.pk) == "rejected"

    assert_rejected_untraded(detected, "risk: venue_paused bravo", before)


def test_a_one_sided_fill_left_open_counts_against_the_exposure_cap(detected: Opportunity) -> None:
    """A trade left 0.2 BTC bought on alpha that no hedge could close (it needs attention);
    another 0.5 there would make 0.7 at 30000."""
    failed = again(detected)
    Opportunity.objects.filter(pk=failed.pk).update(status=Status.ATTENTION)
    Order.objects.create(
        opportunity=failed,
        venue=detected.buy_venue,
        symbol="BTC/USDT",
        side="buy",
        role="buy",
        client_order_id=f"arb{failed.pk}-buy",
        price=Decimal(30_000),
        amount=Decimal("0.5"),
        filled=Decimal("0.2"),
        status=Order.Status.PARTIAL,
    )
    set_limits(max_open_exposure=Decimal(20_000))
    before = balances()

    assert execution.execute_opportunity(detected.pk) == "rejected"

    assert_rejected_untraded(detected, "risk: max_exposure alpha BTC 21000 over 20000", before)


def test_a_pair_in_cooldown_waits_and_trades_once_the_time_has_passed(detected: Opportunity) -> None:
    set_limits(pair_cooldown_seconds=60)
    assert execution.execute_opportunity(detected.pk) == "executed"
    second = again(detected)
    before = balances()

    assert execution.execute_opportunity(second.pk) == "rejected"
    assert_rejected_untraded(second, "risk: cooldown alpha->bravo traded", before)

    # A minute later (the first trade's orders dated back instead of waiting for it):
    Order.objects.filter(opportunity=detected).update(created_at=timezone.now() - timedelta(seconds=61))
    assert execution.execute_opportunity(again(detected).pk) == "executed"


# --- the kill switch ------------------------------------------------------------------------------


@pytest.mark.usefixtures("eager_tasks")
def test_a_loss_past_the_daily_limit_trips_the_switch_alerts_and_stops_the_next_trade(
    detected: Opportunity, chat: Chat, django_capture_on_commit_callbacks
) -> None:
    set_limits(daily_loss_limit=Decimal(500))
    record_loss("-600")

    with django_capture_on_commit_callbacks(execute=True):
        assert execution.execute_opportunity(detected.pk) == "executed"  # -580.05 on the day

    switch = KillSwitch.objects.get()
    assert switch.tripped
    assert (switch.reason, switch.tripped_by) == (
        "daily_loss: realized -580.05 today, limit 500",
        "daily loss limit",
    )
    alert = Alert.objects.get(key="kill_switch", resolved_at__isnull=True)
    assert alert.severity == Alert.Severity.CRITICAL
    assert any("Kill switch tripped" in text for text in chat.telegram.texts())
    following = again(detected)
    before = balances()
    assert execution.execute_opportunity(following.pk) == "rejected"
    assert_rejected_untraded(following, "kill_switch: daily_loss: realized -580.05", before)


def test_the_monitoring_beat_trips_the_switch_on_a_loss_without_any_new_trade(
    market: None, redis_client: redis.Redis, django_capture_on_commit_callbacks
) -> None:
    set_limits(daily_loss_limit=Decimal(100))
    record_loss("-60")
    monitor_check()
    assert not KillSwitch.objects.filter(tripped_at__isnull=False).exists()
    record_loss("-60")

    with django_capture_on_commit_callbacks(execute=True):
        monitor_check()

    assert KillSwitch.objects.get().reason == "daily_loss: realized -120 today, limit 100"
    assert Alert.objects.filter(key="kill_switch", resolved_at__isnull=True).count() == 1


def test_tripping_twice_keeps_the_first_reason_and_time_and_one_alert(market: None) -> None:
    first = risk_controls.trip("exchange hacked", by="alice")
    second = risk_controls.trip("another reason", by="bob")

    assert (second.reason, second.tripped_by, second.tripped_at) == (
        "exchange hacked",
        "alice",
        first.tripped_at,
    )
    assert Alert.objects.filter(key="kill_switch").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_trade_checking_while_a_trip_is_being_written_waits_for_it_and_is_stopped(
    detected: Opportunity,
) -> None:
    risk_controls.kill_switch()  # the switch's row exists, armed, as it does once anything has read it
    tripping, release = threading.Event(), threading.Event()

    def trip_and_hold() -> None:
        with transaction.atomic():
            risk_controls.trip("incident", by="alice")
            tripping.set()
            release.wait(scaled(10))
        connection.close()

    def execute() -> str:
        try:
            return execution.execute_opportunity(detected.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        tripped = pool.submit(trip_and_hold)
        assert tripping.wait(scaled(10))
        trade = pool.submit(execute)
        with pytest.raises(TimeoutError):
            trade.result(timeout=scaled(1))  # held at the switch until the trip is written
        release.set()
        tripped.result(timeout=scaled(10))
        assert trade.result(timeout=scaled(10)) == "rejected"

    detected.refresh_from_db()
    assert detected.reason == "kill_switch: incident"
    assert not Order.objects.exists()


def test_only_a_re_arm_clears_the_switch_not_monitoring_runs_or_a_fresh_process(
    detected: Opportunity, redis_client: redis.Redis, settings, django_capture_on_commit_callbacks
) -> None:
    settings.ALERT_CLEAR_SECONDS = 0
    risk_controls.trip("manual stop", by="alice")
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            monitoring.run_once()

    # Nothing is cached in a process: the state read anew from the database is still tripped.
    assert KillSwitch.objects.get().tripped
    assert Alert.objects.filter(key="kill_switch", resolved_at__isnull=True).exists()
    assert execution.execute_opportunity(detected.pk) == "rejected"

    risk_controls.rearm("carol")
    with django_capture_on_commit_callbacks(execute=True):
        monitoring.run_once()
    assert not Alert.objects.filter(key="kill_switch", resolved_at__isnull=True).exists()
    assert execution.execute_opportunity(again(detected).pk) == "executed"


def test_the_command_trips_reports_and_re_arms_recording_who(detected: Opportunity, capsys) -> None:
    call_command("kill_switch", "trip", "--reason", "venue incident", "--by", "alice")
    assert "TRIPPED" in capsys.readouterr().out
    assert execution.execute_opportunity(detected.pk) == "rejected"
    detected.refresh_from_db()
    assert detected.reason == "kill_switch: venue incident"

    call_command("kill_switch", "status")
    status = capsys.readouterr().out
    assert "TRIPPED" in status
    assert "by alice (command): venue incident" in status
    with pytest.raises(CommandError):
        call_command("kill_switch", "rearm")
    assert KillSwitch.objects.get().tripped

    call_command("kill_switch", "rearm", "--by", "bob")
    assert "re-armed" in capsys.readouterr().out
    switch = KillSwitch.objects.get()
    assert (switch.tripped, switch.rearmed_by, switch.reason) == (False, "bob", "venue incident")
    assert execution.execute_opportunity(again(detected).pk) == "executed"


def test_the_admin_actions_trip_with_a_reason_and_re_arm_recording_the_user(
    detected: Opportunity, admin_client: Client, admin_user
) -> None:
    admin_client.get(KILL_SWITCH_ADMIN)
    switch_pk = KillSwitch.objects.get().pk

    refused = admin_client.post(
        KILL_SWITCH_ADMIN,
        {"action": "trip_switch", "_selected_action": [switch_pk], "reason": ""},
        follow=True,
    )
    assert "Give a reason" in refused.content.decode()
    assert not KillSwitch.objects.get().tripped

    admin_client.post(
        KILL_SWITCH_ADMIN, {"action": "trip_switch", "_selected_action": [switch_pk], "reason": "drill"}
    )
    switch = KillSwitch.objects.get()
    assert (switch.tripped, switch.reason, switch.tripped_by) == (
        True,
        "drill",
        f"{admin_user.username} (admin)",
    )
    assert Alert.objects.filter(key="kill_switch", resolved_at__isnull=True).exists()
    assert execution.execute_opportunity(detected.pk) == "rejected"

    admin_client.post(KILL_SWITCH_ADMIN, {"action": "rearm_switch", "_selected_action": [switch_pk]})
    switch = KillSwitch.objects.get()
    assert (switch.tripped, switch.rearmed_by) == (False, admin_user.username)
    assert switch.rearmed_at is not None


def test_the_limits_are_edited_in_admin_and_apply_to_the_next_trade(
    detected: Opportunity, admin_client: Client
) -> None:
    admin_client.get(reverse("admin:trading_risklimits_changelist"))
    bravo = Venue.objects.get(name="bravo")

    response = admin_client.post(
        reverse("admin:trading_risklimits_change", args=[1]),
        {"daily_loss_limit": "250", "pair_cooldown_seconds": "0", "paused_venues": [bravo.pk]},
    )

    assert response.status_code == 302
    assert risk_controls.limits().daily_loss_limit == Decimal(250)
    assert execution.execute_opportunity(detected.pk) == "rejected"
    detected.refresh_from_db()
    assert detected.reason == "risk: venue_paused bravo"
    assert admin_client.get(reverse("admin:trading_risklimits_add")).status_code == 403


def manage(*args: str) -> str:
    """Run manage.py in a fresh process against this test database; its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_tripped_switch_is_still_tripped_in_a_new_process_until_someone_re_arms_it(market: None) -> None:
    risk_controls.trip("exchange incident", by="alice")

    assert "TRIPPED" in manage("kill_switch", "status")
    assert "by dave" in manage("kill_switch", "rearm", "--by", "dave")
    assert not KillSwitch.objects.get().tripped
