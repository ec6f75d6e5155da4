"""The listener's steps, one at a time, against real PostgreSQL and real Redis."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from tests.conftest import fund, make_strategy, make_venue
from tests.quotes import CHEAP, DEAR, FLAT, book
from trading import pubsub
from trading.config import now_ms
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


def test_a_restarted_stream_is_followed_again(listener: Listener) -> None:
    listener.on_price(message(book("alpha", *FLAT), 41), now_ms())
    listener.on_price(message(book("alpha", *FLAT), 1), now_ms())
    assert listener.last_seq[("alpha", "BTC/USDT")] == 1
    assert listener.stats.rejected == {}


def test_symbols_it_does_not_own_are_ignored_not_rejected(redis_client, listener: Listener) -> None:
    other = Listener(redis_client, symbols=["ETH/USDT"])
    other.load_strategy()
    other.on_price(message(book("alpha", *FLAT), 1), now_ms())
    assert (other.stats.ignored, other.stats.ticks, dict(other.stats.rejected)) == (1, 0, {})


def test_heartbeat_carries_the_counters(redis_client, names, listener: Listener) -> None:
    listener.on_price(b"{oops", now_ms())
    listener.heartbeat()
    beat = json.loads(redis_client.get(names.heartbeat(f"listener:{listener.name}")))
    assert beat["rejected"] == {"bad_json": 1}
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
