"""The emulator behaves as Binance and Kraken document they behave, seen through the real ccxt
client: fees in the asset each venue charges them in, client order ids unique among open orders
only and in each venue's format, cancels left pending, filters ignored, and when each order
arrived."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

import ccxt.async_support as ccxt
import pytest

from devtools.emulator import Emulator, emulate
from tests.test_emulator_private import kraken_post
from trading.core.types import Side
from trading.venues.base import OrderRequest
from trading.venues.ccxt_gateway import CcxtGateway, rewrite_api_urls

T = TypeVar("T")
KEYS = {"binance": "binance-rules-key", "kraken": "kraken-rules-key"}
SECRETS = {"binance": "binance-rules-secret", "kraken": base64.b64encode(b"kraken rules secret").decode()}
FEE = Decimal("0.001")
ASK, BID = Decimal("60000"), Decimal("59990")
FUNDS = {"BTC": "1", "USDT": "100000"}
CLIENT_ID_PARAM = {"binance": "newClientOrderId", "kraken": "clientOrderId"}

venues = pytest.mark.parametrize("venue", ["binance", "kraken"])


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate() as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    """Both venues with one level a side (1 BTC each), a 0.1% taker fee and a funded account
    paying fees in the quote currency."""
    for venue in KEYS:
        running_emulator.set_book(venue, "BTC/USDT", [[BID, "1"]], [[ASK, "1"]])
        running_emulator.set_taker_fee(venue, FEE)
        fund(running_emulator, venue)
    yield running_emulator
    running_emulator.reset()


def fund(emulator: Emulator, venue: str, fee_asset: str = "quote", **balances: str) -> None:
    emulator.add_account(venue, KEYS[venue], SECRETS[venue], balances or FUNDS, fee_asset=fee_asset)


@asynccontextmanager
async def connected(emulator: Emulator, venue: str) -> AsyncIterator[Any]:
    """A raw ccxt client of `venue` signing with the test account's keys, markets loaded."""
    exchange = ccxt.binance() if venue == "binance" else ccxt.kraken()
    exchange.urls = {**exchange.urls, "api": rewrite_api_urls(exchange.urls["api"], emulator.url_for(venue))}
    exchange.apiKey, exchange.secret, exchange.enableRateLimit = KEYS[venue], SECRETS[venue], False
    exchange.options["fetchMarkets"] = {"types": ["spot"]}
    exchange.options["fetchMargins"] = False
    exchange.options["fetchCurrencies"] = False
    try:
        await exchange.load_markets()
        yield exchange
    finally:
        await exchange.close()


def session(emulator: Emulator, venue: str, steps: Callable[[Any], Awaitable[T]]) -> T:
    """Run `steps` with a fresh raw ccxt client of `venue`."""

    async def run() -> T:
        async with connected(emulator, venue) as exchange:
            return await steps(exchange)

    return asyncio.run(run())


def limit(
    exchange: Any, side: str, amount: Decimal | str, price: Decimal | str, client_id: str, **params: Any
) -> Awaitable[dict[str, Any]]:
    """An immediate-or-cancel limit order (unless `timeInForce` says otherwise) under `client_id`."""
    options = {CLIENT_ID_PARAM[exchange.id]: client_id, "timeInForce": "IOC", **params}
    return exchange.create_order("BTC/USDT", "limit", side, str(amount), str(price), options)


def rest(exchange: Any, client_id: str) -> Awaitable[dict[str, Any]]:
    """A buy below the ask that rests open."""
    return limit(exchange, "buy", "0.1", "59000", client_id, timeInForce="GTC")


async def free_balances(exchange: Any) -> dict[str, Decimal]:
    balance = await exchange.fetch_balance()
    return {asset: Decimal(str(amount)) for asset, amount in balance["free"].items()}


def balances(emulator: Emulator, venue: str) -> dict[str, Decimal]:
    return session(emulator, venue, free_balances)


# Fees as venues charge them.


@pytest.mark.parametrize(
    ("side", "price", "commission", "after"),
    [
        ("buy", ASK, ("0.0005", "BTC"), {"BTC": "1.4995", "USDT": "70000"}),
        ("sell", BID, ("29.995", "USDT"), {"BTC": "0.5", "USDT": "129965.005"}),
    ],
)
def test_binance_takes_commission_from_the_asset_the_order_receives(
    emulator: Emulator, side: str, price: Decimal, commission: tuple[str, str], after: dict[str, str]
) -> None:
    fund(emulator, "binance", fee_asset="received")

    async def trade(exchange: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        placed = await limit(exchange, side, "0.5", price, "fee-1")
        return placed, await exchange.fetch_my_trades("BTC/USDT")

    placed, trades = session(emulator, "binance", trade)

    fills = [(Decimal(fill["commission"]), fill["commissionAsset"]) for fill in placed["info"]["fills"]]
    assert fills == [(Decimal(commission[0]), commission[1])]
    mine = [
        (Decimal(t["info"]["commission"]), t["info"]["commissionAsset"], t["fee"]["currency"]) for t in trades
    ]
    assert mine == [(Decimal(commission[0]), commission[1], commission[1])]
    assert balances(emulator, "binance") == {asset: Decimal(amount) for asset, amount in after.items()}


@pytest.mark.parametrize(("discount", "bnb_fee"), [("0", "0.05"), ("0.25", "0.0375")])
def test_binance_charges_commission_in_bnb_at_the_price_it_was_told(
    emulator: Emulator, discount: str, bnb_fee: str
) -> None:
    emulator.set_fee_price("binance", "BNB/USDT", "600", discount=discount)
    fund(emulator, "binance", fee_asset="BNB", BNB="1", BTC="0", USDT="100000")

    placed = session(emulator, "binance", lambda exchange: limit(exchange, "buy", "0.5", ASK, "bnb-1"))

    # 0.5 BTC at 60000 is 30000 USDT: 30 USDT of commission, 0.05 BNB at 600 before the discount.
    fill = placed["info"]["fills"][0]
    assert (Decimal(fill["commission"]), fill["commissionAsset"]) == (Decimal(bnb_fee), "BNB")
    assert placed["trades"][0]["fee"]["currency"] == "BNB"
    assert balances(emulator, "binance") == {
        "BNB": 1 - Decimal(bnb_fee),
        "BTC": Decimal("0.5"),
        "USDT": Decimal("70000"),
    }


def test_binance_falls_back_to_the_received_asset_when_bnb_cannot_cover_the_commission(
    emulator: Emulator,
) -> None:
    emulator.set_fee_price("binance", "BNB/USDT", "600")
    fund(emulator, "binance", fee_asset="BNB", BNB="0.01", BTC="0", USDT="100000")

    placed = session(emulator, "binance", lambda exchange: limit(exchange, "buy", "0.5", ASK, "bnb-2"))

    fill = placed["info"]["fills"][0]
    assert (Decimal(fill["commission"]), fill["commissionAsset"]) == (Decimal("0.0005"), "BTC")
    assert balances(emulator, "binance") == {
        "BNB": Decimal("0.01"),
        "BTC": Decimal("0.4995"),
        "USDT": Decimal("70000"),
    }


def test_an_order_paying_fees_in_an_asset_without_a_price_is_refused(emulator: Emulator) -> None:
    fund(emulator, "binance", fee_asset="BNB", BNB="1", BTC="0", USDT="100000")

    with pytest.raises(ccxt.InvalidOrder, match="BNB/USDT"):
        session(emulator, "binance", lambda exchange: limit(exchange, "buy", "0.5", ASK, "bnb-3"))

    assert balances(emulator, "binance") == {"BNB": 1, "BTC": 0, "USDT": 100000}


@pytest.mark.parametrize(
    ("oflags", "fee", "after"),
    [
        ({}, ("30", "USDT"), {"BTC": "1.5", "USDT": "69970"}),
        ({"oflags": "fcib"}, ("0.0005", "BTC"), {"BTC": "1.4995", "USDT": "70000"}),
    ],
)
def test_kraken_charges_fees_in_the_quote_unless_the_order_prefers_the_base(
    emulator: Emulator, oflags: dict[str, str], fee: tuple[str, str], after: dict[str, str]
) -> None:
    async def trade(exchange: Any) -> dict[str, Any]:
        placed = await limit(exchange, "buy", "0.5", ASK, "fee-2", **oflags)
        return await exchange.fetch_order(placed["id"])

    order = session(emulator, "kraken", trade)

    assert (Decimal(str(order["fee"]["cost"])), order["fee"]["currency"]) == (Decimal(fee[0]), fee[1])
    assert balances(emulator, "kraken") == {asset: Decimal(amount) for asset, amount in after.items()}


# Client order ids are unique among open orders only.


@venues
def test_a_client_id_trades_again_once_its_order_is_closed(emulator: Emulator, venue: str) -> None:
    async def twice(exchange: Any) -> list[dict[str, Any]]:
        first = await limit(exchange, "buy", "0.1", ASK, "again-1")
        second = await limit(exchange, "buy", "0.2", ASK, "again-1")
        return [await exchange.fetch_order(order["id"], "BTC/USDT") for order in (first, second)]

    first, second = session(emulator, venue, twice)

    assert first["id"] != second["id"]
    assert [(o["clientOrderId"], o["status"], o["filled"]) for o in (first, second)] == [
        ("again-1", "closed", 0.1),
        ("again-1", "closed", 0.2),
    ]
    assert balances(emulator, venue)["BTC"] == Decimal("1.3")


@venues
def test_a_client_id_is_refused_while_its_order_is_open_and_free_once_cancelled(
    emulator: Emulator, venue: str
) -> None:
    async def steps(exchange: Any) -> dict[str, Any]:
        resting = await rest(exchange, "open-1")
        with pytest.raises(ccxt.InvalidOrder):
            await limit(exchange, "buy", "0.1", ASK, "open-1")
        await exchange.cancel_order(resting["id"], "BTC/USDT")
        again = await limit(exchange, "buy", "0.1", ASK, "open-1")
        return await exchange.fetch_order(again["id"], "BTC/USDT")

    again = session(emulator, venue, steps)

    assert (again["clientOrderId"], again["status"], again["filled"]) == ("open-1", "closed", 0.1)
    assert balances(emulator, venue)["BTC"] == Decimal("1.1")


def test_binance_finds_the_newest_order_carrying_a_client_id(emulator: Emulator) -> None:
    async def steps(exchange: Any) -> tuple[str, dict[str, Any]]:
        await limit(exchange, "buy", "0.1", ASK, "twice-1")
        newest = await limit(exchange, "buy", "0.2", ASK, "twice-1")
        return newest["id"], await exchange.fetch_order(None, "BTC/USDT", {"origClientOrderId": "twice-1"})

    newest_id, found = session(emulator, "binance", steps)

    assert (found["id"], found["filled"]) == (newest_id, 0.2)


def test_kraken_lists_every_closed_order_carrying_a_client_id_newest_first(emulator: Emulator) -> None:
    async def steps(exchange: Any) -> list[str]:
        first = await limit(exchange, "buy", "0.1", ASK, "twice-2")
        second = await limit(exchange, "buy", "0.2", ASK, "twice-2")
        return [first["id"], second["id"]]

    first, second = session(emulator, "kraken", steps)
    answer = kraken_post(
        emulator,
        "/0/private/ClosedOrders",
        KEYS["kraken"],
        SECRETS["kraken"],
        time.time_ns(),
        cl_ord_id="twice-2",
    )

    assert list(answer["result"]["closed"]) == [second, first]


def test_binance_cancel_gives_the_order_the_cancels_client_id(emulator: Emulator) -> None:
    async def steps(exchange: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        resting = await rest(exchange, "relabel-1")
        answer = await exchange.cancel_order(None, "BTC/USDT", {"origClientOrderId": "relabel-1"})
        cancelled = await exchange.fetch_order(resting["id"], "BTC/USDT")
        with pytest.raises(ccxt.OrderNotFound):
            await exchange.fetch_order(None, "BTC/USDT", {"origClientOrderId": "relabel-1"})
        return answer, cancelled

    answer, cancelled = session(emulator, "binance", steps)

    assert answer["info"]["origClientOrderId"] == "relabel-1"
    assert answer["info"]["clientOrderId"] not in ("", "relabel-1")
    assert (cancelled["status"], cancelled["clientOrderId"]) == ("canceled", answer["info"]["clientOrderId"])


# Client order ids in each venue's format.


@pytest.mark.parametrize(
    ("client_id", "accepted"),
    [
        ("arb.7:leg/buy_1-a", True),
        ("x" * 36, True),
        ("x" * 37, False),
        ("with space", False),
        ("semi;colon", False),
        ("naïve", False),
    ],
)
def test_binance_refuses_a_client_id_outside_its_rule(
    emulator: Emulator, client_id: str, accepted: bool
) -> None:
    order = lambda exchange: limit(exchange, "buy", "0.1", ASK, client_id)  # noqa: E731

    if accepted:
        assert session(emulator, "binance", order)["clientOrderId"] == client_id
    else:
        with pytest.raises(ccxt.BadRequest) as refused:
            session(emulator, "binance", order)
        answer = json.loads(str(refused.value).removeprefix("binance "))
        assert answer == {
            "code": -1100,
            "msg": r"Illegal characters found in parameter 'newClientOrderId'; "
            r"legal range is '^[\.A-Z\:/a-z0-9_-]{1,36}$'.",
        }
        assert balances(emulator, "binance")["BTC"] == 1


@pytest.mark.parametrize(
    ("client_id", "accepted"),
    [
        ("6d1b345e-2821-40e2-ad83-4ecb18a06876", True),  # long UUID
        ("da8e4ad59b78481c93e589746b0cf91f", True),  # short UUID
        ("arb-20240509-00010", True),  # free text, 18 characters
        ("arb-20240509-000100", False),  # free text, 19 characters
        ("z" * 32, False),  # short-UUID length, not hex
        ("6d1b345e-2821-40e2-ad83-4ecb18a0687z", False),  # long-UUID length, not a UUID
        ("x" * 40, False),
    ],
)
def test_kraken_refuses_a_client_id_in_none_of_its_formats(
    emulator: Emulator, client_id: str, accepted: bool
) -> None:
    async def order(exchange: Any) -> dict[str, Any]:
        placed = await limit(exchange, "buy", "0.1", ASK, client_id)
        return await exchange.fetch_order(placed["id"])

    if accepted:
        assert session(emulator, "kraken", order)["clientOrderId"] == client_id
    else:
        with pytest.raises(ccxt.BadRequest, match="EGeneral:Invalid arguments"):
            session(emulator, "kraken", order)
        assert balances(emulator, "kraken")["BTC"] == 1


# Cancels left pending.


@venues
def test_a_pending_cancel_reads_open_for_the_set_reads_then_canceled(emulator: Emulator, venue: str) -> None:
    emulator.set_fault(venue, cancel_pending_reads=2)

    async def steps(exchange: Any) -> tuple[dict[str, Any], list[str]]:
        resting = await rest(exchange, "pending-1")
        answer = await exchange.cancel_order(resting["id"], "BTC/USDT")
        reads = [(await exchange.fetch_order(resting["id"], "BTC/USDT"))["status"] for _ in range(3)]
        return answer, reads

    answer, reads = session(emulator, venue, steps)

    assert reads == ["open", "open", "canceled"]
    if venue == "binance":
        assert answer["info"]["status"] == "NEW"  # acknowledged, not yet done
    else:
        assert answer["info"]["result"] == {"count": 1, "pending": True}
    assert balances(emulator, venue) == {"BTC": 1, "USDT": 100000}


@venues
def test_a_pending_cancel_lands_once_its_time_is_up(emulator: Emulator, venue: str) -> None:
    pending_s = 2.0
    emulator.set_fault(venue, cancel_pending_s=pending_s)

    async def steps(exchange: Any) -> tuple[str, str, float]:
        resting = await rest(exchange, "pending-2")
        cancelled_at = time.monotonic()
        await exchange.cancel_order(resting["id"], "BTC/USDT")
        first = (await exchange.fetch_order(resting["id"], "BTC/USDT"))["status"]
        status, deadline = first, time.monotonic() + 10
        while status == "open" and time.monotonic() < deadline:
            status = (await exchange.fetch_order(resting["id"], "BTC/USDT"))["status"]
        return first, status, time.monotonic() - cancelled_at

    first, final, waited = session(emulator, venue, steps)

    assert (first, final) == ("open", "canceled")
    assert waited >= pending_s


@pytest.mark.parametrize(
    ("venue", "refusal"), [("binance", ccxt.OrderNotFound), ("kraken", ccxt.CancelPending)]
)
def test_a_second_cancel_while_one_is_pending_is_refused(
    emulator: Emulator, venue: str, refusal: type[Exception]
) -> None:
    emulator.set_fault(venue, cancel_pending_reads=5)

    async def steps(exchange: Any) -> None:
        resting = await rest(exchange, "pending-3")
        await exchange.cancel_order(resting["id"], "BTC/USDT")
        await exchange.cancel_order(resting["id"], "BTC/USDT")

    with pytest.raises(refusal):
        session(emulator, venue, steps)


@venues
def test_an_order_that_matched_while_its_cancel_was_pending_reads_filled(
    emulator: Emulator, venue: str
) -> None:
    emulator.set_fault(venue, fill_after_cancel=True, cancel_pending_reads=1)
    request = OrderRequest("BTC/USDT", Side.BUY, Decimal("0.5"), ASK, "pending-4")

    async def steps() -> tuple[str, str, str]:
        gateway = CcxtGateway(
            venue,
            venue,
            api_url=emulator.url_for(venue),
            credentials=(KEYS[venue], SECRETS[venue]),
            rate_limited=False,
        )
        try:
            placed = await gateway.create_order(request)
            cancelled = await gateway.cancel_order("pending-4", "BTC/USDT")
            fetched = await gateway.fetch_order("pending-4", "BTC/USDT")
            return placed.status, cancelled.status, fetched.status
        finally:
            await gateway.close()

    assert asyncio.run(steps()) == ("open", "open", "filled")
    assert balances(emulator, venue)["BTC"] == Decimal("1.5")


# A venue that ignores the client id filter.


def test_kraken_ignoring_the_client_id_filter_lists_every_closed_order(emulator: Emulator) -> None:
    async def steps(exchange: Any) -> tuple[list[str], list[str]]:
        await limit(exchange, "buy", "0.1", ASK, "other-1")
        await limit(exchange, "buy", "0.1", ASK, "mine-1")
        honest = await exchange.fetch_closed_orders("BTC/USDT", None, None, {"cl_ord_id": "mine-1"})
        emulator.set_fault("kraken", ignore_client_id_filter=True)
        careless = await exchange.fetch_closed_orders("BTC/USDT", None, None, {"cl_ord_id": "mine-1"})
        return [o["clientOrderId"] for o in honest], [o["clientOrderId"] for o in careless]

    honest, careless = session(emulator, "kraken", steps)
    raw = kraken_post(
        emulator,
        "/0/private/ClosedOrders",
        KEYS["kraken"],
        SECRETS["kraken"],
        time.time_ns(),
        cl_ord_id="mine-1",
    )

    assert honest == ["mine-1"]
    assert sorted(careless) == ["mine-1", "other-1"]
    assert [order["cl_ord_id"] for order in raw["result"]["closed"].values()] == ["mine-1", "other-1"]


def test_binance_ignoring_the_client_id_filter_answers_the_newest_order(emulator: Emulator) -> None:
    emulator.set_fault("binance", ignore_client_id_filter=True)

    async def steps(exchange: Any) -> dict[str, Any]:
        await limit(exchange, "buy", "0.1", ASK, "mine-2")
        await limit(exchange, "buy", "0.2", ASK, "other-2")
        return await exchange.fetch_order(None, "BTC/USDT", {"origClientOrderId": "mine-2"})

    found = session(emulator, "binance", steps)

    assert (found["clientOrderId"], found["filled"]) == ("other-2", 0.2)


# When each order arrived.


@venues
def test_each_orders_arrival_is_recorded_before_any_injected_delay(emulator: Emulator, venue: str) -> None:
    delay_s = 0.5

    async def steps(exchange: Any) -> tuple[int, int, int, int]:
        emulator.set_fault(venue, delay_s=delay_s)
        wall, sent = time.time_ns(), time.monotonic_ns()
        await limit(exchange, "buy", "0.1", ASK, "arrival-1")
        return wall, sent, time.monotonic_ns(), time.time_ns()

    wall_before, sent, answered, wall_after = session(emulator, venue, steps)
    arrivals = emulator.order_arrivals(venue)

    assert list(arrivals) == ["arrival-1"]
    arrival = arrivals["arrival-1"]
    assert sent <= arrival.monotonic_ns <= answered - int(delay_s * 1e9)
    assert wall_before <= arrival.wall_ns <= wall_after
