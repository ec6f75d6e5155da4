"""The admin dashboard: staff see today's PnL and trades, open alerts, venue freshness and a PnL
chart; anyone else is sent to the login page and sees none of it."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from tests.conftest import make_strategy, make_venue
from tests.quotes import book, publish
from trading.dashboard import CHART_HEIGHT, CHART_PAD, pnl_chart
from trading.models import Alert, Opportunity, Trade, Venue

pytestmark = pytest.mark.django_db
URL = "/admin/dashboard/"


def trade(alpha: Venue, pnl: str) -> Trade:
    now = timezone.now()
    opportunity = Opportunity.objects.create(
        symbol="BTC/USDT",
        buy_venue=alpha,
        sell_venue=alpha,
        status="executed",
        detected_at=now,
        last_seen_at=now,
    )
    return Trade.objects.create(
        opportunity=opportunity,
        symbol="BTC/USDT",
        buy_venue=alpha,
        sell_venue=alpha,
        amount=Decimal("0.1"),
        expected_pnl=Decimal("5"),
        realized_pnl=Decimal(pnl),
        fees=Decimal("1"),
    )


@pytest.fixture
def trading_day(redis_client) -> None:
    """Two trades today, one open alert, a fresh venue (alpha) and one never seen (bravo)."""
    make_strategy(symbols=["BTC/USDT"])
    alpha = make_venue("alpha")
    trade(alpha, "12.5")
    trade(alpha, "-2.25")
    make_venue("bravo")
    publish(redis_client, book("alpha", [("30000", "1")], [("30010", "1")]))
    now = timezone.now()
    Alert.objects.create(
        key="venue_stale:bravo",
        severity="critical",
        subject="Venue bravo stale",
        first_seen=now,
        last_seen=now,
    )
    Alert.objects.create(
        key="drawdown",
        severity="critical",
        subject="An old drawdown",
        first_seen=now,
        last_seen=now,
        resolved_at=now,
    )


def test_staff_see_todays_pnl_trades_alerts_venues_and_the_chart(trading_day, admin_client: Client) -> None:
    page = admin_client.get(URL)

    assert page.status_code == 200
    html = page.content.decode()
    assert re.search(r'id="trade-count">2<', html)
    assert re.search(r'id="realized-pnl">10.25<', html)
    assert "Venue bravo stale" in html
    assert "An old drawdown" not in html  # resolved alerts are not shown
    assert re.search(r"<td>alpha</td>\s*<td>up</td>\s*<td>BTC/USDT: \d+\.\d s</td>", html)
    assert re.search(r"<td>bravo</td>\s*<td>up, stale</td>\s*<td>BTC/USDT: never</td>", html)
    points = re.search(r'<polyline [^>]*points="([^"]+)"', html)
    assert points is not None
    assert len(points.group(1).split()) == 3  # the start and one point per trade


def test_anonymous_users_are_sent_to_the_login_page(trading_day, client: Client) -> None:
    page = client.get(URL)

    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/")
    assert b"Venue bravo stale" not in page.content


def test_a_logged_in_user_who_is_not_staff_is_refused(trading_day, client: Client) -> None:
    client.force_login(User.objects.create_user("trader", password="x"))

    page = client.get(URL)

    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/")


def test_the_chart_puts_the_highest_total_at_the_top_and_the_lowest_at_the_bottom() -> None:
    chart = pnl_chart([Decimal("10"), Decimal("-30"), Decimal("5")])

    ys = [float(point.split(",")[1]) for point in chart.points.split()]
    assert (chart.high, chart.low) == (Decimal("10"), Decimal("-20"))
    assert ys[1] == CHART_PAD  # +10, the peak
    assert ys[2] == CHART_HEIGHT - CHART_PAD  # -20, the trough
    assert ys[0] == chart.zero_y


def test_the_alert_list_in_admin_filters_open_alerts(trading_day, admin_client: Client) -> None:
    page = admin_client.get("/admin/trading/alert/", {"state": "open"})

    assert page.status_code == 200
    assert b"Venue bravo stale" in page.content
    assert b"An old drawdown" not in page.content


@pytest.mark.django_db
def test_the_admin_index_links_to_the_dashboard(admin_client: Client) -> None:
    page = admin_client.get("/admin/")
    assert page.status_code == 200
    assert f'href="{URL}"' in page.content.decode()
