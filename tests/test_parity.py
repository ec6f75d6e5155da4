"""Live (paper) and the backtest, held to one result: one stream of books goes through the
listener and paper execution with real Redis and PostgreSQL, and through the replay; both must
open the same opportunities, place the same orders, get the same fills and book the same PnL."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings

from backtest.engine import Replay, Result, Setup, from_quotes
from tests.conftest import fund, make_venue
from tests.money_rules import make_rules_strategy
from tests.quotes import book, publish
from trading import execution, pubsub
from trading.clock import now_ms
from trading.core.types import Quote
from trading.core_inputs import strategy_params, venue_state
from trading.listener import Listener
from trading.models import Balance, Opportunity, Order, StrategyConfig, Trade, Venue

pytestmark = pytest.mark.django_db(transaction=True)
VENUES = ("alpha", "bravo")
FUNDS = {"BTC": "2", "USDT": "60000"}
CENTS = Decimal("0.000000000001")  # the record keeps money to 12 places


Levels = list[tuple[str, str]]


def stream(count: int, seed: int) -> list[tuple[str, Levels, Levels]]:
    """Books (venue, bids, asks) of alpha and bravo in turn around 30,000: each venue's mid
    wanders a few USDT a step, and now and then one of them jumps 15 to 30 USDT and drifts back,
    crossing the other."""
    rng = random.Random(seed)
    mids = {"alpha": Decimal(30_000), "bravo": Decimal(30_000)}
    books = []
    for step in range(count):
        venue = VENUES[step % 2]
        mids[venue] += Decimal(rng.randint(-3, 3))
        if rng.random() < 0.08:
            mids[venue] += Decimal(rng.choice((-1, 1)) * rng.randint(15, 30))
        mids[venue] += (mids[VENUES[1 - step % 2]] - mids[venue]) / 4  # drifts back to the other
        mid = mids[venue].quantize(Decimal("0.01"))
        bids = [(str(mid - 2), "0.2"), (str(mid - 4), "0.5")]
        asks = [(str(mid + 2), "0.2"), (str(mid + 4), "0.5")]
        books.append((venue, bids, asks))
    return books


def trade_live(client: redis.Redis, books: list[tuple[str, Levels, Levels]]) -> list[Quote]:
    """Each book published as a collector does, a moment of its own (a millisecond at least after
    the one before), and taken by the listener then; each opportunity it dispatches is executed
    on paper at once, its settlement announced, and the listener reads the balances it left (as it
    does every second) before the next book. Returns the books as published."""
    listener = Listener(client)
    listener.load_strategy()
    quotes, last = [], 0
    for venue, bids, asks in books:
        while (moment := now_ms()) <= last:
            pass  # one book a millisecond: the replay applies books of one moment together
        last = moment
        quote = book(venue, bids, asks, received_ts=moment)
        quotes.append(quote)
        publish(client, quote)
        kept = pubsub.latest_book(client, quote.symbol, quote.venue)
        assert kept is not None
        for opened in listener.on_price(pubsub.encode_quote(kept), quote.received_ts):
            if Opportunity.objects.get(pk=opened).status == Opportunity.Status.DISPATCHED:
                status = execution.execute_opportunity(opened)
                listener.on_event(pubsub.encode({"opportunity": opened, "status": status, "settled": True}))
                listener.refresh_venues()  # its once-a-second look at the ledger, before the next book
    return quotes


def replay(quotes: list[Quote], setup: Setup) -> Result:
    return Replay(setup, "BTC/USDT").run([from_quotes(quotes, VENUES)])


def live_record() -> dict[str, Any]:
    opportunities = sorted(
        (
            int(o.detected_at.timestamp() * 1000),
            o.buy_venue.name,
            o.sell_venue.name,
            o.status != Opportunity.Status.REJECTED,
            o.reason if o.status == Opportunity.Status.REJECTED else "accepted",
            o.amount,
        )
        for o in Opportunity.objects.select_related("buy_venue", "sell_venue")
    )
    orders = sorted(
        (int(o.opportunity.detected_at.timestamp() * 1000), o.role, o.attempt, o.filled, o.cost)
        for o in Order.objects.select_related("opportunity")
    )
    pnl = sorted(
        (int(t.opportunity.detected_at.timestamp() * 1000), t.realized_pnl)
        for t in Trade.objects.select_related("opportunity")
    )
    held = {(b.venue.name, b.asset): b.free + b.locked for b in Balance.objects.select_related("venue")}
    return {"opportunities": opportunities, "orders": orders, "pnl": pnl, "balances": held}


def replay_record(result: Result) -> dict[str, Any]:
    opportunities = sorted(
        (o.first_ms, o.buy_venue, o.sell_venue, o.accepted, o.reason, o.amount) for o in result.opportunities
    )
    orders = sorted(
        (t.decided_ms, o.role.value, o.attempt, o.filled, o.cost) for t in result.trades for o in t.orders
    )
    pnl = sorted((t.decided_ms, t.net_pnl.quantize(CENTS)) for t in result.trades)
    held = {
        (venue, asset): amount for venue, funds in result.balances.items() for asset, amount in funds.items()
    }
    return {"opportunities": opportunities, "orders": orders, "pnl": pnl, "balances": held}


def test_live_paper_trading_and_the_backtest_agree_on_one_stream(redis_client: redis.Redis) -> None:
    venues = [make_venue(name, max_quote_age_ms=600_000, taker_fee=Decimal("0.0002")) for name in VENUES]
    for venue in venues:
        fund(venue, **FUNDS)
    make_rules_strategy()
    config = StrategyConfig.objects.get(active=True)
    setup = Setup(
        strategy_params(config),
        {
            v.name: venue_state(v, config, {a: Decimal(n) for a, n in FUNDS.items()})
            for v in Venue.objects.all()
        },
        retries=settings.LEG_RETRIES,
        hedge_attempts=settings.HEDGE_ATTEMPTS,
        hedge_max_loss_bps=Decimal(settings.HEDGE_MAX_LOSS_BPS),
    )
    quotes = trade_live(redis_client, stream(1_000, seed=3))
    live, replayed = live_record(), replay_record(replay(quotes, setup))

    assert len(live["pnl"]) >= 10, "the stream should trade now and then"
    assert len(live["opportunities"]) > len(live["pnl"])  # and reject some crossings
    assert live["opportunities"] == replayed["opportunities"]
    assert live["orders"] == replayed["orders"]
    assert live["pnl"] == replayed["pnl"]
    assert {k: v for k, v in live["balances"].items() if v} == {
        k: v for k, v in replayed["balances"].items() if v
    }
