"""The listener's steps, one at a time, against real PostgreSQL and real Redis."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from decimal import Decimal

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from tests.conftest import ROOT, child_env, free_port, fund, make_strategy, make_venue
from tests.quotes import CHEAP, DEAR, FLAT, book
from trading import pubsub, trade_store
from trading.clock import now_ms
from trading.core.types import Quote
from trading.listener import Listener
from trading.models import Opportunity

pytestmark = pytest.mark.django_db


@pytest.fixture
def listener(redis_client) -> Listener:
    for name in ("alpha", "bravo"):
        fund(make_venue(name), BTC="2", USDT="100000")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"))
    listener = Listener(redis_client)
    listener.load_strategy()
    return listener


def message(quote: Quote, seq: int) -> bytes:
    return pubsub.encode_quote(dataclasses.replace(quote, seq=seq))


def test_a_persisting_gap_is_one_opportunity_and_its_close_records_its_ticks(listener: Listener) -> None:
    for seq in range(1, 4):
        listener.on_price(message(book("alpha", *CHEAP), seq), now_ms())
        listener.on_price(message(book("bravo", *DEAR), seq), now_ms())

    rows = list(Opportunity.objects.all())
    assert len(rows) == 1
    assert rows[0].status == Opportunity.Status.DISPATCHED
    assert (rows[0].buy_venue.name, rows[0].sell_venue.name) == ("alpha", "bravo")
    assert rows[0].expected_profit == Decimal("19.95")

    listener.on_price(message(book("bravo", *FLAT), 4), now_ms())
    rows[0].refresh_from_db()
    assert rows[0].ticks == 5  # bravo's first tick opened it; four more ticks saw it
    assert listener.open == {}


def test_a_rejected_gap_that_becomes_tradeable_opens_an_accepted_opportunity(listener: Listener) -> None:
    thin = [("30010", "1")], [("30020", "1")]  # crosses alpha's ask, but fees eat it
    listener.on_price(message(book("alpha", *CHEAP), 1), now_ms())
    listener.on_price(message(book("bravo", *thin), 1), now_ms())
    listener.on_price(message(book("bravo", *DEAR), 2), now_ms())

    statuses = list(Opportunity.objects.order_by("pk").values_list("status", "reason"))
    assert statuses == [("rejected", "below_min_profit"), ("dispatched", "")]


def test_sequence_gaps_are_counted_and_replays_rejected(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *FLAT), 1), now_ms())
    listener.on_price(message(book("alpha", *FLAT), 5), now_ms())
    listener.on_price(message(book("alpha", *FLAT), 3), now_ms())

    assert listener.stats.missed == 3
    assert listener.stats.rejected == {"out_of_order": 1}
    assert listener.stats.ticks == 2


def test_a_restarted_stream_is_followed_once_its_next_book_confirms_it(listener: Listener) -> None:
    for seq in (41, 1, 2, 3):
        listener.on_price(message(book("alpha", *FLAT), seq), now_ms())

    assert listener.last_seq[("alpha", "BTC/USDT")] == 3
    assert listener.stats.rejected == {"out_of_order": 1}  # the claim, until seq 2 carried it on
    assert (listener.stats.restarts, listener.stats.missed, listener.stats.ticks) == (1, 0, 3)


def test_a_poisoned_sequence_number_neither_counts_a_gap_nor_blinds_the_venue(listener: Listener) -> None:
    for seq in (1, 2, 2**63 - 1, 3, 4):
        listener.on_price(message(book("alpha", *FLAT), seq), now_ms())

    assert listener.stats.rejected == {"seq_jump": 1}
    assert (listener.stats.missed, listener.stats.restarts, listener.stats.ticks) == (0, 0, 4)
    assert listener.last_seq[("alpha", "BTC/USDT")] == 4


def test_a_poisoned_first_book_gives_way_to_the_real_stream(listener: Listener) -> None:
    for seq in (2**63 - 1, 5001, 5002, 5004):
        listener.on_price(message(book("alpha", *FLAT), seq), now_ms())

    assert listener.stats.rejected == {"out_of_order": 1}
    assert (listener.stats.restarts, listener.stats.missed, listener.stats.ticks) == (1, 1, 3)


def test_a_bounded_jump_is_a_gap_and_a_longer_one_a_claim(listener: Listener, settings) -> None:
    listener.sequence_rules = dataclasses.replace(listener.sequence_rules, max_gap=100)
    for seq in (1, 101, 302):
        listener.on_price(message(book("alpha", *FLAT), seq), now_ms())

    assert listener.stats.missed == 99
    assert listener.stats.rejected == {"seq_jump": 1}


def test_gaps_across_a_reconnect_are_counted(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *FLAT), 7), now_ms())
    listener.reconnect(should_stop=lambda: False).close()
    listener.on_price(message(book("alpha", *FLAT), 12), now_ms())

    assert (listener.stats.missed, listener.stats.reconnects, listener.stats.ticks) == (4, 1, 2)


def test_a_book_on_another_symbols_channel_is_rejected(listener: Listener, names) -> None:
    quote = message(book("alpha", *FLAT), 1)
    listener.on_price(quote, now_ms(), channel=names.prices("ETH/USDT").encode())
    listener.on_price(quote, now_ms(), channel=names.prices("BTC/USDT").encode())

    assert listener.stats.rejected == {"wrong_channel": 1}
    assert listener.stats.venue_rejected == {("alpha", "wrong_channel"): 1}
    assert listener.stats.ticks == 1


def test_a_book_far_from_the_other_venues_is_refused_and_opens_nothing(listener: Listener) -> None:
    fund(make_venue("charlie"), BTC="2", USDT="100000")
    listener.refresh_venues()
    listener.on_price(message(book("alpha", *CHEAP), 1), now_ms())
    listener.on_price(message(book("charlie", *FLAT), 1), now_ms())
    twice = [("60100", "1")], [("60110", "1")]  # twice the market: a 30,000 USDT "gap"
    listener.on_price(message(book("bravo", *twice), 1), now_ms())

    assert listener.stats.rejected == {"price_band": 1}
    assert listener.stats.venue_rejected == {("bravo", "price_band"): 1}
    assert "bravo" not in listener.books["BTC/USDT"]
    assert Opportunity.objects.count() == 0
    listener.on_price(message(book("bravo", *DEAR), 2), now_ms())  # back in the market: traded
    assert set(Opportunity.objects.values_list("status", "sell_venue__name")) == {("dispatched", "bravo")}


def test_two_venues_that_disagree_are_both_refused_until_they_agree(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *CHEAP), 1), now_ms())
    listener.on_price(message(book("bravo", [("60100", "1")], [("60110", "1")]), 1), now_ms())
    for seq in (2, 3, 4):  # whose market? nothing says, until bravo's own books outvote its spike
        listener.on_price(message(book("bravo", *DEAR), seq), now_ms())

    assert listener.stats.rejected == {"price_band": 3}
    assert Opportunity.objects.filter(status="dispatched").count() == 1


def test_a_venue_alone_is_judged_by_its_own_recent_books(listener: Listener) -> None:
    for seq in range(1, 4):
        listener.on_price(message(book("alpha", *FLAT), seq), now_ms())
    listener.on_price(message(book("alpha", [("1000000", "1")], [("1000010", "1")]), 4), now_ms())
    listener.on_price(message(book("alpha", *FLAT), 5), now_ms())

    assert listener.stats.rejected == {"price_band": 1}
    assert listener.books["BTC/USDT"]["alpha"].seq == 5


def test_a_real_move_is_followed_once_the_venues_own_books_agree(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *FLAT), 1), now_ms())
    moved = [("33000", "1")], [("33010", "1")]  # 10% up: out of the band, at first
    for seq in range(2, 6):
        listener.on_price(message(book("alpha", *moved), seq), now_ms())

    assert listener.stats.rejected == {"price_band": 1}
    assert listener.books["BTC/USDT"]["alpha"].seq == 5


def test_any_junk_is_a_counted_rejection_and_the_listener_goes_on(listener: Listener) -> None:
    junk: list[object] = [b"\xff\xfe", b'{"venue":"\xc3"}', "\ud800", None, 42, b"[" * 60_000, b"x" * 70_000]
    for raw in junk:
        listener.on_price(raw, now_ms())
    listener.on_price(message(book("alpha", *FLAT), 1), now_ms())

    assert sum(listener.stats.rejected.values()) == len(junk)
    assert listener.stats.ticks == 1


def test_symbols_it_does_not_own_are_ignored_not_rejected(redis_client, listener: Listener) -> None:
    other = Listener(redis_client, symbols=["ETH/USDT"])
    other.load_strategy()
    other.on_price(message(book("alpha", *FLAT), 1), now_ms())
    assert (other.stats.ignored, other.stats.ticks, dict(other.stats.rejected)) == (1, 0, {})


def test_heartbeat_carries_the_counters(redis_client, names, listener: Listener) -> None:
    listener.on_price(b"{oops", now_ms())
    listener.on_price(message(book("nowhere", *FLAT), 1), now_ms())
    listener.heartbeat()
    beat = json.loads(redis_client.get(names.heartbeat(f"listener:{listener.name}")))
    assert beat["rejected"] == {"bad_json": 1, "unknown_venue": 1}
    assert beat["venue_rejected"] == {"nowhere": {"unknown_venue": 1}}
    assert {"ignored", "errors", "reconnects", "restarts", "dispatched", "opportunities"} <= set(beat)
    assert redis_client.ttl(names.heartbeat(f"listener:{listener.name}")) > 0


def test_strategy_without_symbols_decides_nothing(redis_client, listener: Listener) -> None:
    from trading.models import StrategyConfig

    StrategyConfig.objects.update(active=False)
    listener.load_strategy()
    assert listener.on_price(message(book("alpha", *CHEAP), 1), now_ms()) == []
    assert Opportunity.objects.count() == 0


def test_a_strategy_change_announced_on_the_control_channel_is_loaded(listener: Listener, names) -> None:
    from trading.models import StrategyConfig

    StrategyConfig.objects.update(active=False)
    make_strategy(version=2, min_profit_bps=Decimal("50"), trade_size=Decimal("0.1"))
    listener.handle({"channel": names.strategy_control.encode(), "data": b'{"version": 2}'})

    assert listener.params is not None
    assert (listener.params.min_profit_bps, listener.params.trade_size) == (Decimal("50"), Decimal("0.1"))
    # 13.3 bps no longer clears a 50 bps bar: the same gap is now rejected.
    listener.on_price(message(book("alpha", *CHEAP), 1), now_ms())
    listener.on_price(message(book("bravo", *DEAR), 1), now_ms())
    assert list(Opportunity.objects.values_list("status", "reason")) == [("rejected", "below_min_profit")]


WARM_DISPATCH = """
import json, sys
import django
django.setup()
import redis.connection
from trading.listener import Listener, connect
TRADE_PATH = ("trading.tasks", "trading.execution", "trading.settlement")
listener = Listener(connect(), name="warm")
listener.warm_up()
connects = []
original = redis.connection.Connection._connect
def counted(self):
    connects.append(1)
    return original(self)
redis.connection.Connection._connect = counted
listener.dispatch(12345)
print(json.dumps({
    "connects": len(connects),
    "dispatched": listener.stats.dispatched,
    "loaded": sorted(m for m in TRADE_PATH if m in sys.modules),
}))
"""


def test_a_warmed_listener_dispatches_by_name_with_no_import_and_no_connection(redis_client, names) -> None:
    run = subprocess.run(
        [sys.executable, "-c", WARM_DISPATCH],
        cwd=ROOT,
        env=child_env(DJANGO_SETTINGS_MODULE="arbsite.settings"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])

    assert report == {"connects": 0, "dispatched": 1, "loaded": []}
    [message] = redis_client.lrange(f"{names.prefix}trade", 0, -1)  # routed to the trade queue
    headers = json.loads(message)["headers"]
    assert (headers["task"], headers["argsrepr"]) == ("trade.execute_opportunity", "(12345,)")


def test_a_gap_as_wide_as_validation_allows_is_recorded_when_the_band_is_off(listener: Listener) -> None:
    listener.band = dataclasses.replace(listener.band, max_bps=Decimal(0))
    listener.on_price(message(book("alpha", [("0.0000009", "1")], [("0.000001", "1")]), 1), now_ms())
    listener.on_price(message(book("bravo", [("1000", "1")], [("1001", "1")]), 1), now_ms())

    assert listener.stats.errors == 0
    row = Opportunity.objects.get()
    assert row.expected_bps is not None
    assert row.expected_bps > Decimal("1E+12")  # past the old numeric(12, 4)


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        (value,) = cursor.fetchone()
    return str(value)


@pytest.mark.django_db(transaction=True)
def test_the_listeners_commits_never_wait_for_the_disk_on_any_session_it_opens() -> None:
    assert synchronous_commit() == "on"
    trade_store.defer_flushes()  # what listen_prices does first
    try:
        assert synchronous_commit() == "off"
        connection.close()
        assert synchronous_commit() == "off"  # a session opened after a lost connection too
    finally:
        connection_created.disconnect(dispatch_uid="trade_store.defer_flushes")
        connection.close()


def test_a_decision_is_recorded_in_one_statement(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *CHEAP), 1), now_ms())

    with CaptureQueriesContext(connection) as queries:
        [opened] = listener.on_price(message(book("bravo", *DEAR), 1), now_ms())

    assert [q["sql"].split(" INTO ")[0] for q in queries.captured_queries] == ["INSERT"]
    assert Opportunity.objects.get(pk=opened).status == "dispatched"


UNREACHABLE_BROKER = """
import json
import django
django.setup()
from tests.quotes import CHEAP, DEAR, book
from trading import pubsub
from trading.clock import now_ms
from trading.listener import Listener, connect
listener = Listener(connect(), name="no-broker")
listener.load_strategy()
listener.reserve()
first = listener.reserved[-1]
for quote in (book("alpha", *CHEAP), book("bravo", *DEAR)):
    listener.on_price(pubsub.encode_quote(quote), now_ms())
print(json.dumps({"first": first, "dispatched": listener.stats.dispatched}))
"""


@pytest.mark.django_db(transaction=True)
def test_an_opportunity_whose_task_the_broker_refused_is_recorded_failed_flat() -> None:
    """With an id in hand the task goes out before the row is written: when the broker refuses
    it, the row says so and nothing waits on it."""
    for name in ("alpha", "bravo"):
        fund(make_venue(name), BTC="2", USDT="100000")
    make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.5"))
    run = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_BROKER],
        cwd=ROOT,
        env=child_env(
            DJANGO_SETTINGS_MODULE="arbsite.settings", CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])

    opportunity = Opportunity.objects.get()
    assert (opportunity.pk, report["dispatched"]) == (report["first"], 0)
    assert opportunity.status == Opportunity.Status.FAILED
    assert opportunity.reason.startswith("dispatch failed:")
