"""The money path with real Celery workers: a trade cut off by its soft or hard time limit is
resumed from what the venues say, and twenty trades at once on one venue pair neither deadlock
nor overbook nor strand funds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal

import psycopg
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from devtools.emulator import Emulator
from tests.conftest import Child, child_env, fund, make_strategy, make_venue, start_worker
from tests.deadlines import wait_until
from tests.quotes import book, publish
from tests.test_live_execution import CHEAP, DEAR, emulator, live_env, running_emulator, settings_db  # noqa: F401
from tests.test_live_execution import live as live
from trading import lifecycle, reconcile, risk_controls
from trading.models import Balance, Opportunity, Order, StrategyConfig, Trade, Venue
from trading.tasks import execute_opportunity, resume_abandoned

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
Status = Opportunity.Status
FINAL = {Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.ATTENTION}


def dispatched(**limits: int | None) -> Opportunity:
    """The known live gap (binance sells at 60000, kraken buys at 60200) as a dispatched
    opportunity, its trade task sent with the given time limits."""
    publish(redis_client_for_tests(), book("binance", *CHEAP), book("kraken", *DEAR))
    now = timezone.now()
    opportunity = Opportunity.objects.create(
        symbol="BTC/USDT",
        buy_venue=Venue.objects.get(name="binance"),
        sell_venue=Venue.objects.get(name="kraken"),
        status=Status.DISPATCHED,
        mode="live",
        strategy=StrategyConfig.objects.get(active=True),
        detected_at=now,
        last_seen_at=now,
    )
    execute_opportunity.apply_async((opportunity.pk,), **limits)
    return opportunity


def redis_client_for_tests() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def status_of(opportunity: Opportunity) -> str:
    return Opportunity.objects.get(pk=opportunity.pk).status


def resumed_to_the_end(opportunity: Opportunity) -> str:
    """Run the resume sweep until the opportunity is done with; its final status."""
    wait_until(
        lambda: opportunity.pk in lifecycle.abandoned(), timeout=60, what="the cut-off trade abandoned"
    )
    resume_abandoned()
    wait_until(lambda: status_of(opportunity) in FINAL, timeout=90, what="the resumed trade finished")
    return status_of(opportunity)


def test_a_trade_cut_off_by_its_soft_time_limit_mid_retries_is_resumed_and_ends_flat(
    live: Emulator, redis_client, spawn: Callable[..., Child]
) -> None:
    """The buy fills; kraken refuses the sells slowly, so the task's 2 s soft limit fires among
    the retries. The trade stays executing, alerted; the sweep hands it on, and once kraken
    answers again its retry fills: every order recorded as the venues have it."""
    worker = start_worker(spawn, pool="prefork", concurrency=1, env=child_env(**live_env()))
    # A first trade warms the pool process (its gateways, markets and connections), so that on a
    # loaded machine the 2 s limit below falls among the retries, not before the orders go out.
    warm = dispatched()
    wait_until(lambda: status_of(warm) in FINAL, timeout=90, what="the warm-up trade finished")
    assert status_of(warm) == Status.EXECUTED
    live.set_fault("kraken", reject="market closed", delay_s=1.5)
    opportunity = dispatched(soft_time_limit=2, time_limit=60)

    wait_until(
        lambda: "SoftTimeLimitExceeded" in worker.output() and status_of(opportunity) == Status.EXECUTING,
        timeout=60,
        what="the soft time limit cutting the trade off",
    )
    live.clear_fault("kraken")

    assert resumed_to_the_end(opportunity) in (Status.EXECUTED, Status.FAILED)
    assert reconcile.reconcile_all() == []  # recorded orders and balances are the venues'
    assert risk_controls.open_exposure("BTC") == {}
    assert all(b.locked == 0 for b in Balance.objects.all())


def test_a_trade_whose_process_its_hard_time_limit_killed_is_resumed_and_trades_each_leg_once(
    live: Emulator, redis_client, spawn: Callable[..., Child]
) -> None:
    """Kraken refuses the sells slowly, and the alerts table is locked by another session (a
    database stuck under the trade): the soft limit's exception cannot even be recorded, so the
    hard limit kills the process mid-trade, without a word. The sweep finds the trade and resumes
    it from what the venues say."""
    worker = start_worker(spawn, pool="prefork", concurrency=1, env=child_env(**live_env()))
    live.set_fault("kraken", reject="market closed", delay_s=1.5)
    with psycopg.connect(**settings_db()) as blocker, blocker.transaction():
        blocker.execute("LOCK TABLE trading_alert IN ACCESS EXCLUSIVE MODE")
        opportunity = dispatched(soft_time_limit=2, time_limit=4)
        wait_until(lambda: "Hard time limit" in worker.output(), timeout=60, what="the hard time limit")
    assert status_of(opportunity) == Status.EXECUTING
    live.clear_fault("kraken")

    assert resumed_to_the_end(opportunity) in (Status.EXECUTED, Status.FAILED)
    bought = sum(o.filled for o in Order.objects.filter(side="buy"))
    sold = sum(o.filled for o in Order.objects.filter(side="sell"))
    assert bought == sold  # flat, whatever the venue's answers were
    assert reconcile.reconcile_all() == []


def test_twenty_trades_at_once_on_one_pair_neither_deadlock_nor_overbook_nor_strand_funds(
    redis_client, spawn: Callable[..., Child]
) -> None:
    """alpha offers 0.4 BTC at 30000 and 0.4 at 30010, bravo bids 30100 for 0.4 and 30090 for
    0.4; twenty opportunities of 0.05 on them are dispatched at once to four worker processes."""
    slow = {"max_quote_age_ms": 600_000}  # the books must outlast a loaded machine, not test freshness
    alpha, bravo = make_venue("alpha", **slow), make_venue("bravo", **slow)
    fund(alpha, BTC="0", USDT="1000000")
    fund(bravo, BTC="10", USDT="0")
    strategy = make_strategy(min_profit_bps=Decimal("5"), trade_size=Decimal("0.05"), ttl_ms=600_000, **slow)
    asks = [("30000", "0.4"), ("30010", "0.4")]
    bids = [("30100", "0.4"), ("30090", "0.4")]
    start_worker(spawn, pool="prefork", concurrency=4)
    publish(redis_client, book("alpha", [("29990", "1")], asks), book("bravo", bids, [("30110", "1")]))
    before = {(b.venue.name, b.asset): b.free for b in Balance.objects.select_related("venue")}
    now = timezone.now()
    batch = [
        Opportunity.objects.create(
            symbol="BTC/USDT",
            buy_venue=alpha,
            sell_venue=bravo,
            status=Status.DISPATCHED,
            strategy=strategy,
            detected_at=now,
            last_seen_at=now,
        )
        for _ in range(20)
    ]

    for opportunity in batch:
        lifecycle.dispatch(opportunity.pk)
    wait_until(lambda: all(status_of(o) in FINAL for o in batch), timeout=120, what="all twenty finished")

    reasons = [o.reason for o in Opportunity.objects.all()]
    assert not any("deadlock" in reason or "cooldown" in reason for reason in reasons), reasons
    assert Opportunity.objects.filter(status=Status.EXECUTED).count() == 16  # 0.8 BTC of liquidity
    taken: defaultdict[Decimal, Decimal] = defaultdict(Decimal)
    for order in Order.objects.filter(side="buy"):
        for price, amount in order.raw["fills"]:
            taken[Decimal(price)] += Decimal(amount)
    assert dict(taken) == {Decimal(30000): Decimal("0.4"), Decimal(30010): Decimal("0.4")}
    after = {(b.venue.name, b.asset): (b.free, b.locked) for b in Balance.objects.select_related("venue")}
    assert all(locked == 0 for _, locked in after.values())
    trades = list(Trade.objects.all())
    usdt = sum((after[(v, "USDT")][0] - before[(v, "USDT")] for v in ("alpha", "bravo")), Decimal(0))
    btc = sum((after[(v, "BTC")][0] - before[(v, "BTC")] for v in ("alpha", "bravo")), Decimal(0))
    assert (usdt, btc) == (sum(t.quote_flow for t in trades), sum(t.base_flow for t in trades))
    assert usdt == sum(t.realized_pnl for t in trades)  # matched trades: PnL is the change in holdings
