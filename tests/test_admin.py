"""The admin as an operator uses it: reviewing trades and decisions, editing venues, switching strategy
versions. Real PostgreSQL, and real Redis for the control.strategy announcement."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import make_strategy, make_venue
from tests.deadlines import Deadline, scaled
from trading.models import Balance, Opportunity, Order, StrategyConfig, Trade, Venue
from trading.pubsub import Names

pytestmark = pytest.mark.django_db

TRADES = reverse("admin:trading_trade_changelist")
OPPORTUNITIES = reverse("admin:trading_opportunity_changelist")
ORDERS = reverse("admin:trading_order_changelist")
STRATEGIES = reverse("admin:trading_strategyconfig_changelist")


def make_opportunity(buy: Venue, sell: Venue, **fields: Any) -> Opportunity:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "symbol": "BTC/USDT",
        "amount": Decimal("0.5"),
        "expected_profit": Decimal("10"),
        "expected_bps": Decimal("40"),
        "status": Opportunity.Status.EXECUTED,
        "reason": "accepted",
        "detected_at": now,
        "last_seen_at": now,
    }
    defaults.update(fields)
    return Opportunity.objects.create(buy_venue=buy, sell_venue=sell, **defaults)


def make_leg(opportunity: Opportunity, side: str, venue: Venue, price: str, **fields: Any) -> Order:
    defaults: dict[str, Any] = {
        "symbol": opportunity.symbol,
        "client_order_id": f"arb-{opportunity.pk}-{side}",
        "price": Decimal(price),
        "amount": Decimal("0.5"),
        "filled": Decimal("0.5"),
        "average_price": Decimal(price),
        "fee": Decimal("0.05"),
        "status": Order.Status.FILLED,
        "raw": {"id": f"v-{opportunity.pk}-{side}", "status": "closed", "fills": [{"qty": "0.5"}]},
    }
    defaults.update(fields)
    defaults.setdefault("role", side)
    return Order.objects.create(opportunity=opportunity, venue=venue, side=side, **defaults)


def make_trade(
    buy: Venue, sell: Venue, *, expected: str = "10", realized: str = "7.5", mode: str = "paper"
) -> Trade:
    """A trade as the trade worker records it: its opportunity, a filled buy leg and a filled sell leg."""
    opportunity = make_opportunity(buy, sell, expected_profit=Decimal(expected))
    make_leg(opportunity, "buy", buy, "30000")
    make_leg(opportunity, "sell", sell, "30030")
    return Trade.objects.create(
        opportunity=opportunity,
        symbol=opportunity.symbol,
        buy_venue=buy,
        sell_venue=sell,
        amount=Decimal("0.5"),
        expected_pnl=Decimal(expected),
        realized_pnl=Decimal(realized),
        fees=Decimal("0.1"),
        mode=mode,
    )


@pytest.fixture
def venues() -> tuple[Venue, Venue, Venue]:
    return make_venue("alpha"), make_venue("bravo"), make_venue("charlie")


def shown(response: Any) -> set[int]:
    """The primary keys of the rows a change list displays."""
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


def change_url(obj: Any) -> str:
    return reverse(f"admin:trading_{obj._meta.model_name}_change", args=[obj.pk])


def current_form(client: Client, url: str) -> dict[str, Any]:
    """The change form's values as a browser would post them back unchanged."""
    form = client.get(url).context["adminform"].form
    data: dict[str, Any] = {}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else value
    return data


# --- trades -----------------------------------------------------------------------------------------


def test_trade_list_shows_expected_and_realized_pnl_with_the_slippage(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo, expected="10", realized="7.5")

    response = admin_client.get(TRADES)

    assert shown(response) == {trade.pk}
    html = response.content.decode()
    assert '<td class="field-expected_pnl">10</td>' in html
    assert '<td class="field-realized_pnl">7.5</td>' in html
    assert '<td class="field-slippage">-2.5</td>' in html
    assert '<td class="field-fees">0.1</td>' in html
    assert '<td class="field-buy_venue nowrap">alpha</td>' in html
    assert '<td class="field-sell_venue nowrap">bravo</td>' in html


def test_trade_page_shows_both_legs_and_no_editable_money(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo)
    buy_leg, sell_leg = trade.opportunity.orders.order_by("side")

    response = admin_client.get(change_url(trade))

    html = response.content.decode()
    for leg in (buy_leg, sell_leg):
        assert f'<a href="{change_url(leg)}">{leg.client_order_id}</a>' in html
    assert "<td>30030</td>" in html  # the sell leg's average price
    form = response.context["adminform"].form
    assert set(form.fields) == {"reviewed"}


def test_trade_filters_by_buy_and_sell_venue_mode_reviewed_and_date(admin_client: Client, venues) -> None:
    alpha, bravo, charlie = venues
    first = make_trade(alpha, bravo)
    second = make_trade(charlie, alpha, mode="live")
    third = make_trade(bravo, charlie)
    Trade.objects.filter(pk=third.pk).update(reviewed=True)
    Trade.objects.filter(pk=first.pk).update(created_at=dt.datetime(2024, 3, 1, tzinfo=dt.UTC))

    assert shown(admin_client.get(TRADES, {"buy_venue__id__exact": alpha.pk})) == {first.pk}
    assert shown(admin_client.get(TRADES, {"sell_venue__id__exact": alpha.pk})) == {second.pk}
    assert shown(admin_client.get(TRADES, {"mode": "live"})) == {second.pk}
    assert shown(admin_client.get(TRADES, {"reviewed__exact": "0"})) == {first.pk, second.pk}
    assert shown(admin_client.get(TRADES, {"created_at__year": "2024"})) == {first.pk}


def test_trade_search_finds_by_leg_client_order_id_opportunity_id_and_venue(
    admin_client: Client, venues
) -> None:
    alpha, bravo, charlie = venues
    first = make_trade(alpha, bravo)
    second = make_trade(charlie, bravo)
    second_sell = second.opportunity.orders.get(side="sell")

    assert shown(admin_client.get(TRADES, {"q": second_sell.client_order_id})) == {second.pk}
    assert shown(admin_client.get(TRADES, {"q": str(first.opportunity_id)})) == {first.pk}
    assert shown(admin_client.get(TRADES, {"q": "charlie"})) == {second.pk}
    assert shown(admin_client.get(TRADES, {"q": "BTC/USDT"})) == {first.pk, second.pk}


def test_posting_money_to_a_trade_changes_only_reviewed(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo, realized="7.5")

    response = admin_client.post(
        change_url(trade),
        {"reviewed": "on", "realized_pnl": "999", "expected_pnl": "999", "fees": "0", "amount": "9"},
    )

    assert response.status_code == 302
    trade.refresh_from_db()
    assert trade.reviewed is True
    assert (trade.realized_pnl, trade.expected_pnl, trade.fees, trade.amount) == (
        Decimal("7.5"),
        Decimal("10"),
        Decimal("0.1"),
        Decimal("0.5"),
    )


def test_trades_cannot_be_added_or_deleted_in_admin(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo)

    assert admin_client.get(reverse("admin:trading_trade_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:trading_trade_delete", args=[trade.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert Trade.objects.filter(pk=trade.pk).exists()


def test_mark_reviewed_action_marks_only_the_selected_trades(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    picked, other = make_trade(alpha, bravo), make_trade(bravo, alpha)

    response = admin_client.post(
        TRADES, {"action": "mark_reviewed", "_selected_action": [picked.pk]}, follow=True
    )

    assert "1 trade(s) marked as reviewed." in response.content.decode()
    assert set(Trade.objects.filter(reviewed=True).values_list("pk", flat=True)) == {picked.pk}
    assert not Trade.objects.get(pk=other.pk).reviewed


# --- opportunities, orders, balances ----------------------------------------------------------------


def test_opportunity_list_shows_status_and_reason_and_filters_on_them(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    stale = make_opportunity(alpha, bravo, status=Opportunity.Status.REJECTED, reason="stale_quote")
    thin = make_opportunity(bravo, alpha, status=Opportunity.Status.REJECTED, reason="below_min_profit")
    accepted = make_opportunity(alpha, bravo, status=Opportunity.Status.DISPATCHED, reason="accepted")

    response = admin_client.get(OPPORTUNITIES)

    assert shown(response) == {stale.pk, thin.pk, accepted.pk}
    html = response.content.decode()
    assert '<td class="field-reason">stale_quote</td>' in html
    assert '<td class="field-status">Rejected</td>' in html
    assert shown(admin_client.get(OPPORTUNITIES, {"reason": "stale_quote"})) == {stale.pk}
    assert shown(admin_client.get(OPPORTUNITIES, {"status__exact": "dispatched"})) == {accepted.pk}
    assert shown(admin_client.get(OPPORTUNITIES, {"buy_venue__id__exact": bravo.pk})) == {thin.pk}


def test_opportunity_page_is_read_only_and_lists_its_legs_and_trade(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo)
    opportunity = trade.opportunity

    response = admin_client.get(change_url(opportunity))

    html = response.content.decode()
    assert f"arb-{opportunity.pk}-buy" in html
    assert f"arb-{opportunity.pk}-sell" in html
    assert f'<a href="{change_url(trade)}">' in html
    assert admin_client.post(change_url(opportunity), {"status": "failed"}).status_code == 403
    assert Opportunity.objects.get(pk=opportunity.pk).status == Opportunity.Status.EXECUTED
    assert admin_client.get(reverse("admin:trading_opportunity_add")).status_code == 403


def test_order_page_shows_the_venue_response_pretty_printed(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo)
    leg = trade.opportunity.orders.get(side="buy")

    html = admin_client.get(change_url(leg)).content.decode()

    pretty = json.dumps(leg.raw, indent=2, sort_keys=True).replace('"', "&quot;")
    assert f"<pre>{pretty}</pre>" in html
    assert admin_client.post(change_url(leg), {"status": "canceled"}).status_code == 403


def test_orders_filter_by_venue_side_and_status_and_search_by_client_order_id(
    admin_client: Client, venues
) -> None:
    alpha, bravo, _ = venues
    trade = make_trade(alpha, bravo)
    buy, sell = trade.opportunity.orders.order_by("side")
    Order.objects.filter(pk=sell.pk).update(status=Order.Status.PARTIAL)

    assert shown(admin_client.get(ORDERS, {"side__exact": "sell"})) == {sell.pk}
    assert shown(admin_client.get(ORDERS, {"venue__id__exact": alpha.pk})) == {buy.pk}
    assert shown(admin_client.get(ORDERS, {"status__exact": "partial"})) == {sell.pk}
    assert shown(admin_client.get(ORDERS, {"q": buy.client_order_id})) == {buy.pk}


def test_balances_are_listed_per_venue_and_read_only(admin_client: Client, venues) -> None:
    alpha, bravo, _ = venues
    usdt = Balance.objects.create(venue=alpha, asset="USDT", free=Decimal("1000"))
    btc = Balance.objects.create(venue=bravo, asset="BTC", free=Decimal("1.5"))
    balances = reverse("admin:trading_balance_changelist")

    assert shown(admin_client.get(balances, {"venue__id__exact": bravo.pk})) == {btc.pk}
    assert '<td class="field-free">1000</td>' in admin_client.get(balances).content.decode()
    assert admin_client.post(change_url(usdt), {"free": "5"}).status_code == 403
    assert admin_client.get(reverse("admin:trading_balance_add")).status_code == 403


def test_quotes_have_no_change_list_that_would_count_the_table(admin_client: Client) -> None:
    assert admin_client.get("/admin/trading/quote/").status_code == 404


# --- venues -----------------------------------------------------------------------------------------


def test_venue_settings_are_editable_but_status_is_the_collectors(admin_client: Client, venues) -> None:
    alpha, _, _ = venues
    Venue.objects.filter(pk=alpha.pk).update(status=Venue.Status.DOWN, status_reason="timeouts")
    data = current_form(admin_client, change_url(alpha))
    data.update(taker_fee="0.00075", max_quote_age_ms="1500", api_url="http://127.0.0.1:9999")
    data.pop("enabled")

    response = admin_client.post(change_url(alpha), {**data, "status": "up", "name": "renamed"})

    assert response.status_code == 302
    alpha.refresh_from_db()
    assert (alpha.taker_fee, alpha.max_quote_age_ms, alpha.api_url, alpha.enabled) == (
        Decimal("0.00075"),
        1500,
        "http://127.0.0.1:9999",
        False,
    )
    assert (alpha.name, alpha.status, alpha.status_reason) == ("alpha", Venue.Status.DOWN, "timeouts")


# --- strategy versions ------------------------------------------------------------------------------


@pytest.fixture
def control(redis_client: redis.Redis, names: Names) -> Iterator[redis.client.PubSub]:
    """A subscriber on control.strategy, subscribed before the test acts."""
    subscriber = redis_client.pubsub()
    subscriber.subscribe(names.strategy_control)
    confirmation = subscriber.get_message(timeout=scaled(5))
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    yield subscriber
    subscriber.close()


def next_announcement(subscriber: redis.client.PubSub, timeout: float = 5) -> dict[str, Any]:
    deadline = Deadline(timeout)
    while not deadline.passed():
        message = subscriber.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            return json.loads(message["data"])
    raise AssertionError("no message on control.strategy")


def active_versions() -> list[int]:
    return list(StrategyConfig.objects.filter(active=True).values_list("version", flat=True))


# Announcements go out after commit, so these tests commit for real (transactional database) and
# the user sees what happened in the same response.
AFTER_COMMIT = pytest.mark.django_db(transaction=True)


@AFTER_COMMIT
def test_activating_a_version_leaves_exactly_it_active_and_tells_listeners(
    admin_client: Client, control: redis.client.PubSub
) -> None:
    make_strategy(version=1, active=True)
    make_strategy(version=2, active=False)
    chosen = make_strategy(version=3, active=False)

    response = admin_client.post(
        STRATEGIES, {"action": "activate", "_selected_action": [chosen.pk]}, follow=True
    )

    assert "Version 3 is now the active strategy." in response.content.decode()
    assert active_versions() == [3]
    assert next_announcement(control) == {"version": 3}


def test_activation_needs_exactly_one_selected_version(
    admin_client: Client, django_capture_on_commit_callbacks
) -> None:
    make_strategy(version=1, active=True)
    two, three = make_strategy(version=2, active=False), make_strategy(version=3, active=False)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(
            STRATEGIES, {"action": "activate", "_selected_action": [two.pk, three.pk]}, follow=True
        )

    assert "Select exactly one version to activate." in response.content.decode()
    assert active_versions() == [1]
    assert callbacks == []


@AFTER_COMMIT
def test_activation_is_kept_when_redis_is_unreachable_and_the_user_is_warned(
    admin_client: Client, settings
) -> None:
    make_strategy(version=1, active=True)
    chosen = make_strategy(version=2, active=False)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    response = admin_client.post(
        STRATEGIES, {"action": "activate", "_selected_action": [chosen.pk]}, follow=True
    )

    assert "running listeners were not told" in response.content.decode()
    assert active_versions() == [2]


def test_save_as_new_makes_the_next_version_inactive(admin_client: Client) -> None:
    active = make_strategy(version=4, active=True, trade_size=Decimal("0.5"))
    data = current_form(admin_client, change_url(active))
    data.update(trade_size="0.25", _saveasnew="Save as new")

    response = admin_client.post(change_url(active), data)

    assert response.status_code == 302
    copy = StrategyConfig.objects.get(version=5)
    assert (copy.active, copy.trade_size, copy.symbols) == (False, Decimal("0.25"), ["BTC/USDT"])
    assert active_versions() == [4]


def test_a_new_config_gets_the_next_version_and_starts_inactive(admin_client: Client) -> None:
    make_strategy(version=7, active=True)
    add = reverse("admin:trading_strategyconfig_add")
    data = current_form(admin_client, add)
    data.update(symbols='["ETH/USDT", "BTC/USDT"]', trade_size="0.1", note="wider")

    response = admin_client.post(add, data)

    assert response.status_code == 302
    created = StrategyConfig.objects.get(note="wider")
    assert (created.version, created.active, created.symbols) == (8, False, ["ETH/USDT", "BTC/USDT"])
    assert active_versions() == [7]


def test_saving_a_config_cannot_make_a_second_one_active(admin_client: Client) -> None:
    make_strategy(version=1, active=True)
    other = make_strategy(version=2, active=False)
    data = current_form(admin_client, change_url(other))

    response = admin_client.post(change_url(other), {**data, "active": "on", "version": "1"})

    assert response.status_code == 302
    assert active_versions() == [1]
    assert StrategyConfig.objects.get(pk=other.pk).version == 2


@AFTER_COMMIT
def test_editing_the_active_version_tells_listeners_and_an_inactive_one_does_not(
    admin_client: Client, control: redis.client.PubSub
) -> None:
    active = make_strategy(version=1, active=True)
    idle = make_strategy(version=2, active=False)

    for config in (idle, active):
        data = current_form(admin_client, change_url(config))
        assert admin_client.post(change_url(config), {**data, "min_profit_bps": "8"}).status_code == 302

    # Pub/Sub keeps order: had the inactive edit been announced, it would arrive first.
    assert next_announcement(control) == {"version": 1}
    assert StrategyConfig.objects.get(pk=active.pk).min_profit_bps == Decimal("8")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("symbols", '"BTC/USDT"', "A non-empty list of symbols"),
        ("symbols", '["BTCUSDT"]', "is not a symbol like BTC/USDT"),
        ("venue_limits", '{"nowhere": "100"}', "Unknown venue(s): nowhere."),
        ("venue_limits", '{"alpha": "-5"}', "The limit for alpha must be positive"),
        ("trade_size", "0", "The trade size must be positive."),
    ],
)
def test_a_config_that_the_strategy_could_not_use_is_refused(
    admin_client: Client, venues, field: str, value: str, error: str
) -> None:
    config = make_strategy(version=1, active=True)
    data = current_form(admin_client, change_url(config))

    response = admin_client.post(change_url(config), {**data, field: value})

    assert response.status_code == 200
    assert error in response.content.decode()
    assert StrategyConfig.objects.get(pk=config.pk).symbols == ["BTC/USDT"]
