"""Orders through the ccxt gateway: the real ccxt client signs and sends them to the emulator's
private endpoints in both dialects, which match them against the served book."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from django.conf import settings

from devtools.emulator import DEFAULT_MARKETS, DIALECTS, Emulator, emulate
from tests.deadlines import wait_until
from trading.core.ledger import Charge
from trading.core.types import MarketRules, Side
from trading.venues.base import (
    InsufficientBalance,
    OrderNotFound,
    OrderRejected,
    OrderRequest,
    OrderResult,
    TemporaryVenueError,
    VenueError,
)
from trading.venues.ccxt_gateway import CcxtGateway, order_status
from trading.venues.pacing import SharedPacer, bucket_key

T = TypeVar("T")
FEE = Decimal("0.002")
ASKS = [["60000", "0.3"], ["60010", "0.5"], ["60050", "2"]]
BIDS = [["59990", "0.2"], ["59980", "0.3"], ["59900", "5"]]
KEYS = {"binance": "binance-key-4f1c", "kraken": "kraken-key-93ab"}
SECRETS = {"binance": "binance-secret-7d2e91", "kraken": base64.b64encode(b"kraken-secret-5c0a77e1").decode()}
FUNDS = {"BTC": "1", "USDT": "100000"}


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate() as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    """Both venues with the test book, a 0.2% taker fee and a funded account each."""
    for venue in DIALECTS:
        running_emulator.set_book(venue, "BTC/USDT", BIDS, ASKS)
        running_emulator.set_taker_fee(venue, FEE)
        running_emulator.add_account(venue, KEYS[venue], SECRETS[venue], FUNDS)
    yield running_emulator
    running_emulator.reset()


def trade(
    emulator: Emulator,
    venue: str,
    action: Callable[[CcxtGateway], Awaitable[T]],
    *,
    credentials: tuple[str, str] | None = None,
    timeout_ms: int = 3000,
) -> T:
    """Run `action` on a fresh gateway holding the venue's account keys, closed afterwards."""

    async def run() -> T:
        gateway = CcxtGateway(
            venue,
            venue,
            api_url=emulator.url_for(venue),
            timeout_ms=timeout_ms,
            credentials=credentials or (KEYS[venue], SECRETS[venue]),
            rate_limited=False,
        )
        try:
            return await action(gateway)
        finally:
            await gateway.close()

    return asyncio.run(run())


def buy(amount: str, price: str, client_order_id: str = "opp1-buy-1") -> OrderRequest:
    return OrderRequest("BTC/USDT", Side.BUY, Decimal(amount), Decimal(price), client_order_id)


def sell(amount: str, price: str, client_order_id: str = "opp1-sell-1") -> OrderRequest:
    return OrderRequest("BTC/USDT", Side.SELL, Decimal(amount), Decimal(price), client_order_id)


def place(emulator: Emulator, venue: str, request: OrderRequest, **options: Any) -> Any:
    return trade(emulator, venue, lambda gateway: gateway.create_order(request), **options)


venues = pytest.mark.parametrize("venue", list(DIALECTS))


@venues
def test_ioc_buy_fills_fully_across_levels_and_balances_move(emulator: Emulator, venue: str) -> None:
    result = place(emulator, venue, buy("0.5", "60010"))

    cost = Decimal("60000") * Decimal("0.3") + Decimal("60010") * Decimal("0.2")
    assert (result.status, result.filled, result.amount) == ("filled", Decimal("0.5"), Decimal("0.5"))
    assert result.client_order_id == "opp1-buy-1"
    assert result.average_price == cost / Decimal("0.5")
    assert result.charges == (Charge("USDT", cost * FEE),)
    # Binance answers an order with its executions; Kraken states the fee and average, and its
    # executions would cost a TradesHistory call, the dearest of its rate limit, for nothing new.
    executions = [(Decimal("60000"), Decimal("0.3")), (Decimal("60010"), Decimal("0.2"))]
    assert [(fill.price, fill.amount) for fill in result.fills] == (executions if venue == "binance" else [])
    balances = trade(emulator, venue, lambda gateway: gateway.fetch_balance())
    assert balances["BTC"] == Decimal("1.5")
    assert balances["USDT"] == Decimal("100000") - cost - cost * FEE
    assert balances == emulator.balances(venue, KEYS[venue])


@venues
def test_ioc_sell_takes_bids_down_to_its_limit_and_the_rest_is_cancelled(
    emulator: Emulator, venue: str
) -> None:
    result = place(emulator, venue, sell("1", "59980"))

    assert (result.status, result.filled) == ("partial", Decimal("0.5"))
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("0.5")


@venues
def test_limit_beyond_the_book_fills_nothing_and_is_cancelled(emulator: Emulator, venue: str) -> None:
    result = place(emulator, venue, buy("0.1", "59000"))

    assert (result.status, result.filled, result.average_price, result.charges) == ("canceled", 0, None, ())
    assert emulator.balances(venue, KEYS[venue]) == {"BTC": Decimal("1"), "USDT": Decimal("100000")}


@venues
def test_partial_fill_fault_fills_only_part_of_the_order(emulator: Emulator, venue: str) -> None:
    emulator.set_fault(venue, fill_fraction="0.4")

    result = place(emulator, venue, buy("0.5", "60010"))

    assert (result.status, result.filled) == ("partial", Decimal("0.2"))
    assert result.average_price == Decimal("60000")
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1.2")


@venues
def test_order_beyond_the_balance_is_refused_and_never_exists(emulator: Emulator, venue: str) -> None:
    emulator.add_account(venue, KEYS[venue], SECRETS[venue], {"BTC": "0", "USDT": "1000"})

    with pytest.raises(InsufficientBalance, match=venue):
        place(emulator, venue, buy("0.5", "60010"))

    assert emulator.balances(venue, KEYS[venue]) == {"BTC": Decimal("0"), "USDT": Decimal("1000")}
    with pytest.raises(OrderNotFound):
        trade(emulator, venue, lambda gateway: gateway.fetch_order("opp1-buy-1", "BTC/USDT"))


@venues
@pytest.mark.parametrize(("amount", "price"), [("0.123456", "60010"), ("0.1", "60010.005")])
def test_an_order_off_the_market_precision_is_refused_before_sending(
    emulator: Emulator, venue: str, amount: str, price: str
) -> None:
    with pytest.raises(OrderRejected, match="precision"):
        place(emulator, venue, buy(amount, price))

    with pytest.raises(OrderNotFound):
        trade(emulator, venue, lambda gateway: gateway.fetch_order("opp1-buy-1", "BTC/USDT"))


@venues
def test_injected_insufficient_balance_is_refused_as_the_venue_words_it(
    emulator: Emulator, venue: str
) -> None:
    emulator.set_fault(venue, reject="insufficient balance")

    with pytest.raises(InsufficientBalance, match=venue):
        place(emulator, venue, buy("0.1", "60010"))


@venues
def test_injected_rejection_is_order_rejected_with_the_reason(emulator: Emulator, venue: str) -> None:
    emulator.set_fault(venue, reject="Market is closed for maintenance")

    with pytest.raises(OrderRejected, match="Market is closed for maintenance") as raised:
        place(emulator, venue, buy("0.1", "60010"))

    assert not isinstance(raised.value, InsufficientBalance)
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1")


@pytest.mark.parametrize("failing", list(DIALECTS))
@pytest.mark.parametrize("status", [429, 503])
def test_overload_on_one_venue_leaves_the_other_trading(
    emulator: Emulator, failing: str, status: int
) -> None:
    healthy = next(venue for venue in DIALECTS if venue != failing)
    emulator.set_fault(failing, status=status)

    with pytest.raises(TemporaryVenueError, match=failing):
        place(emulator, failing, buy("0.1", "60010"))
    result = place(emulator, healthy, buy("0.1", "60010"))

    assert (result.status, result.filled) == ("filled", Decimal("0.1"))
    emulator.clear_fault(failing)
    with pytest.raises(OrderNotFound):
        trade(emulator, failing, lambda gateway: gateway.fetch_order("opp1-buy-1", "BTC/USDT"))


@pytest.mark.parametrize("failing", list(DIALECTS))
def test_a_timed_out_order_may_still_land_and_is_found_by_client_id(emulator: Emulator, failing: str) -> None:
    healthy = next(venue for venue in DIALECTS if venue != failing)
    emulator.set_fault(failing, delay_s=0.6)

    with pytest.raises(TemporaryVenueError, match=failing):
        place(emulator, failing, buy("0.1", "60010"), timeout_ms=300)
    result = place(emulator, healthy, buy("0.1", "60010"))
    emulator.clear_fault(failing)

    assert (result.status, result.filled) == ("filled", Decimal("0.1"))
    wait_until(lambda: emulator.balances(failing, KEYS[failing])["BTC"] > 1, timeout=5, what="the late order")
    found = trade(emulator, failing, lambda gateway: gateway.fetch_order("opp1-buy-1", "BTC/USDT"))
    assert (found.status, found.filled) == ("filled", Decimal("0.1"))


@venues
def test_an_order_is_found_again_by_its_client_order_id(emulator: Emulator, venue: str) -> None:
    placed = place(emulator, venue, buy("0.5", "60010", "opp7-buy-1"))

    found = trade(emulator, venue, lambda gateway: gateway.fetch_order("opp7-buy-1", "BTC/USDT"))

    assert found.venue_order_id == placed.venue_order_id
    assert (found.status, found.filled, found.average_price, found.charges) == (
        placed.status,
        placed.filled,
        placed.average_price,
        placed.charges,
    )
    assert found.fills == placed.fills


@venues
def test_an_order_that_never_arrived_is_not_found(emulator: Emulator, venue: str) -> None:
    with pytest.raises(OrderNotFound, match=venue):
        trade(emulator, venue, lambda gateway: gateway.fetch_order("opp9-sell-1", "BTC/USDT"))


@venues
def test_fill_after_a_cancel_request_shows_filled(emulator: Emulator, venue: str) -> None:
    emulator.set_fault(venue, fill_after_cancel=True)
    placed = place(emulator, venue, buy("0.5", "60010"))

    cancelled = trade(emulator, venue, lambda gateway: gateway.cancel_order("opp1-buy-1", "BTC/USDT"))
    fetched = trade(emulator, venue, lambda gateway: gateway.fetch_order("opp1-buy-1", "BTC/USDT"))

    assert (placed.status, placed.filled) == ("open", 0)
    assert (cancelled.status, cancelled.filled) == ("filled", Decimal("0.5"))
    assert (fetched.status, fetched.filled) == ("filled", Decimal("0.5"))
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1.5")


@venues
def test_cancelling_a_finished_order_reports_its_final_state(emulator: Emulator, venue: str) -> None:
    place(emulator, venue, sell("1", "59980"))

    cancelled = trade(emulator, venue, lambda gateway: gateway.cancel_order("opp1-sell-1", "BTC/USDT"))

    assert (cancelled.status, cancelled.filled) == ("partial", Decimal("0.5"))


@venues
def test_a_client_order_id_is_refused_while_an_open_order_carries_it(emulator: Emulator, venue: str) -> None:
    emulator.set_fault(venue, fill_after_cancel=True)  # the first order stays open until cancelled
    place(emulator, venue, buy("0.1", "60010", "opp3-buy-1"))

    with pytest.raises(OrderRejected, match=venue):
        place(emulator, venue, buy("0.1", "60010", "opp3-buy-1"))

    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1")


@venues
def test_a_client_order_id_reused_after_its_order_closed_trades_again(emulator: Emulator, venue: str) -> None:
    """What the venues document, and why our ids must never repeat for the life of an account."""
    place(emulator, venue, buy("0.1", "60010", "opp3-buy-1"))

    again = place(emulator, venue, buy("0.1", "60010", "opp3-buy-1"))

    assert again.filled == Decimal("0.1")
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1.2")


@venues
def test_a_lookup_answered_with_another_order_never_adopts_it(emulator: Emulator, venue: str) -> None:
    """Under the fault the venue ignores the client id filter: Kraken lists every order (ours is
    not among them, so it was never placed), Binance answers with its newest order (so whether
    ours exists is unknown, which is not "never placed": nothing may be sent again on it)."""
    place(emulator, venue, buy("0.1", "60010", "someone-else-1"))
    emulator.set_fault(venue, ignore_client_id_filter=True)

    with pytest.raises(VenueError) as raised:
        trade(emulator, venue, lambda gateway: gateway.fetch_order("opp9-buy-1", "BTC/USDT"))

    assert isinstance(raised.value, OrderNotFound) is (venue == "kraken")


@venues
def test_an_order_is_found_as_ours_among_others_when_the_venue_ignores_the_filter(
    emulator: Emulator, venue: str
) -> None:
    emulator.set_fault(venue, ignore_client_id_filter=True)

    async def session(gateway: CcxtGateway) -> tuple[OrderResult, OrderResult]:
        mine = await gateway.create_order(buy("0.2", "60010", "opp9-buy-1"))
        await gateway.create_order(buy("0.1", "60010", "someone-else-2"))  # the newest
        return mine, await gateway.fetch_order("opp9-buy-1", "BTC/USDT")

    mine, found = trade(emulator, venue, session)

    assert (found.venue_order_id, found.filled) == (mine.venue_order_id, Decimal("0.2"))


@venues
@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_a_request_signed_with_wrong_credentials_is_refused(
    emulator: Emulator, venue: str, wrong: str
) -> None:
    other = base64.b64encode(b"someone-else").decode()
    credentials = (KEYS[venue], other) if wrong == "secret" else ("unknown-key-000", SECRETS[venue])

    with pytest.raises(VenueError, match=f"^{venue}: AuthenticationError") as raised:
        place(emulator, venue, buy("0.1", "60010"), credentials=credentials)

    assert not isinstance(raised.value, TemporaryVenueError)
    assert credentials[0] not in str(raised.value)
    assert credentials[1] not in str(raised.value)
    assert emulator.balances(venue, KEYS[venue])["BTC"] == Decimal("1")


@venues
def test_no_secret_in_logs_exceptions_reprs_or_raw_answers(
    emulator: Emulator, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    async def session(gateway: CcxtGateway) -> None:
        seen.append(repr(gateway))
        placed = await gateway.create_order(buy("0.1", "60010"))
        seen.append(json.dumps(placed.raw) + repr(placed))
        seen.append(repr(await gateway.fetch_balance()))
        for failing in (gateway.create_order(buy("50", "60010")), gateway.fetch_order("nope", "BTC/USDT")):
            try:
                await failing
            except VenueError as exc:
                seen.append(f"{exc!r} {exc.__cause__!r} {exc.__context__!r}")

    trade(emulator, venue, session)
    try:
        place(emulator, venue, buy("0.1", "60010", "x"), credentials=(KEYS[venue], SECRETS["kraken"][::-1]))
    except VenueError as exc:
        seen.append(repr(exc))

    everything = "\n".join(seen + [record.getMessage() for record in caplog.records])
    assert len(seen) == 6
    assert SECRETS[venue] not in everything
    assert KEYS[venue] not in everything


@venues
@pytest.mark.parametrize("market", DEFAULT_MARKETS, ids=lambda market: market.symbol)
def test_market_rules_match_the_venue_markets(emulator: Emulator, venue: str, market: Any) -> None:
    rules = trade(emulator, venue, lambda gateway: gateway.market_rules(market.symbol))

    assert rules == MarketRules(
        amount_step=market.step,
        min_amount=market.min_amount,
        min_cost=market.min_cost,
        price_tick=market.tick,
    )


def test_a_kraken_order_spends_two_private_calls_of_its_rate_limit(emulator: Emulator) -> None:
    """Kraken counts every private call against the key's budget (3 s each for a query): an
    order is placed, then read back once by the id Kraken gave it, its fee included."""
    private = ["AddOrder", "QueryOrders", "ClosedOrders", "OpenOrders", "TradesHistory"]
    before = {call: emulator.request_count("kraken", f"/0/private/{call}") for call in private}

    placed = place(emulator, "kraken", buy("0.5", "60010"))

    spent = {call: emulator.request_count("kraken", f"/0/private/{call}") - before[call] for call in private}
    assert spent == {"AddOrder": 1, "QueryOrders": 1, "ClosedOrders": 0, "OpenOrders": 0, "TradesHistory": 0}
    # 0.3 at 60000 and 0.2 at 60010 with the 0.2% fee
    assert (placed.status, placed.filled, placed.charges) == (
        "filled",
        Decimal("0.5"),
        (Charge("USDT", Decimal("60.004")),),
    )


@venues
def test_the_fee_tier_is_read_from_the_venue_for_the_signing_account(emulator: Emulator, venue: str) -> None:
    assert trade(emulator, venue, lambda gateway: gateway.taker_fee("BTC/USDT")) == FEE

    emulator.set_taker_fee(venue, "0.00075")  # the account reached a cheaper tier
    assert trade(emulator, venue, lambda gateway: gateway.taker_fee("BTC/USDT")) == Decimal("0.00075")
    with pytest.raises(VenueError, match=f"^{venue}: AuthenticationError"):
        trade(emulator, venue, lambda gw: gw.taker_fee("BTC/USDT"), credentials=("unknown-key-000", "eA=="))


def test_the_ccxt_client_spends_the_shared_bucket_by_its_endpoint_costs(
    emulator: Emulator, redis_client
) -> None:
    """ccxt weighs binance's account endpoint 4 tokens (its weight of 20, at 0.2 a token): one
    balance read from a full bucket of one token leaves it 3 in debt, so the next call of the key,
    from any process, waits 150 ms."""

    key = bucket_key(settings.ARB_PREFIX, "binance", KEYS["binance"])

    async def run() -> None:
        gateway = CcxtGateway(
            "binance",
            "binance",
            api_url=emulator.url_for("binance"),
            credentials=(KEYS["binance"], SECRETS["binance"]),
            pacer=SharedPacer(settings.REDIS_URL, key),
        )
        try:
            await gateway.market_rules("BTC/USDT")  # markets first: their own cost is not the point
            await asyncio.sleep(0.5)  # the bucket fills again
            await gateway.fetch_balance()
        finally:
            await gateway.close()

    asyncio.run(run())

    assert float(redis_client.hget(key, "tokens")) == -3


def test_orders_need_credentials_and_an_order_dialect(emulator: Emulator) -> None:
    url = emulator.url_for("binance")
    with_keys = CcxtGateway("binance", "binance", api_url=url, credentials=("k", "s"))
    without = CcxtGateway("binance", "binance", api_url=url)
    unknown = CcxtGateway("okx", "okx", api_url=url, credentials=("k", "s"))

    assert with_keys.capabilities == frozenset({"books", "orders"})
    assert without.capabilities == unknown.capabilities == frozenset({"books"})
    with pytest.raises(VenueError, match="without API credentials"):
        asyncio.run(without.fetch_balance())
    with pytest.raises(VenueError, match="no order dialect"):
        asyncio.run(unknown.create_order(buy("0.1", "60000")))
    for gateway in (with_keys, without, unknown):
        asyncio.run(gateway.close())


@pytest.mark.parametrize(
    ("ccxt_status", "filled", "ours"),
    [
        ("closed", "1", "filled"),
        ("expired", "0.4", "partial"),
        ("canceled", "0.4", "partial"),
        ("expired", "0", "canceled"),
        ("canceled", "0", "canceled"),
        ("open", "0.4", "open"),
        ("rejected", "0", "rejected"),
    ],
)
def test_ccxt_statuses_map_to_ours(ccxt_status: str, filled: str, ours: str) -> None:
    assert order_status(ccxt_status, Decimal("1"), Decimal(filled)) == ours


def test_private_calls_made_together_on_kraken_all_pass_its_nonce_check(emulator: Emulator) -> None:
    """Kraken refuses a nonce not above the last one it saw for the key; calls signed in the same
    millisecond would share one."""

    async def together(gateway: CcxtGateway) -> list[dict[str, Decimal]]:
        return await asyncio.gather(*(gateway.fetch_balance() for _ in range(20)))

    balances = trade(emulator, "kraken", together)

    assert [b["BTC"] for b in balances] == [Decimal(1)] * 20
