"""The emulator's private side on its own: signatures checked the way each venue checks them
(requests signed here by hand, independently of ccxt), order matching and balances, and the
run_emulator command."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import pytest
from django.core.management.base import CommandError

from devtools.emulator import DEFAULT_MARKETS, Emulator, emulate
from devtools.emulator.fees import Fees
from devtools.emulator.matching import Account, OrderFault, OrderState, Refusal, Refused, cancel, place
from devtools.management.commands.run_emulator import (
    FeePriceSpec,
    parse_account,
    parse_fee_asset,
    parse_fee_price,
    parse_funding,
    simulated_feed,
)
from tests.conftest import Child
from tests.deadlines import scaled
from trading.core.types import Side
from trading.venues.base import OrderRequest
from trading.venues.ccxt_gateway import CcxtGateway, rewrite_api_urls
from trading.venues.simulated import simulated_book

BTC_USDT = DEFAULT_MARKETS[0]
FEES = Fees(Decimal("0.001"))
BOOK = (
    ((Decimal("59990"), Decimal("1")),),
    ((Decimal("60000"), Decimal("0.3")), (Decimal("60010"), Decimal("1"))),
)
KRAKEN_SECRET = base64.b64encode(b"a kraken secret of some length").decode()


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate() as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator) -> Iterator[Emulator]:
    running_emulator.add_account("binance", "bkey", "bsecret", {"BTC": "2", "USDT": "1000"})
    running_emulator.add_account("kraken", "kkey", KRAKEN_SECRET, {"BTC": "3", "USDT": "500"})
    yield running_emulator
    running_emulator.reset()


def call(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=scaled(5)) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def binance_get(emulator: Emulator, path: str, key: str, secret: str, **params: Any) -> tuple[int, Any]:
    """A signed Binance GET, signed as Binance documents it."""
    query = urllib.parse.urlencode({"timestamp": int(time.time() * 1000), **params})
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    url = f"{emulator.url_for('binance')}{path}?{query}&signature={signature}"
    return call(urllib.request.Request(url, headers={"X-MBX-APIKEY": key}))


def kraken_post(emulator: Emulator, path: str, key: str, secret: str, nonce: int, **params: Any) -> Any:
    """A signed Kraken POST, signed as Kraken documents it."""
    body = urllib.parse.urlencode({"nonce": nonce, **params})
    message = path.encode() + hashlib.sha256(str(nonce).encode() + body.encode()).digest()
    signature = base64.b64encode(
        hmac.new(base64.b64decode(secret), message, hashlib.sha512).digest()
    ).decode()
    request = urllib.request.Request(
        emulator.url_for("kraken") + path, data=body.encode(), headers={"API-Key": key, "API-Sign": signature}
    )
    return call(request)[1]


def test_binance_account_answers_a_correctly_signed_request(emulator: Emulator) -> None:
    status, body = binance_get(emulator, "/api/v3/account", "bkey", "bsecret", recvWindow=5000)

    assert status == 200
    assert {row["asset"]: Decimal(row["free"]) for row in body["balances"]} == {"BTC": 2, "USDT": 1000}


@pytest.mark.parametrize(
    ("key", "secret", "expected"),
    [
        ("bkey", "not-the-secret", (400, -1022)),
        ("no-such-key", "bsecret", (401, -2015)),
    ],
)
def test_binance_refuses_bad_keys_and_signatures(
    emulator: Emulator, key: str, secret: str, expected: tuple[int, int]
) -> None:
    status, body = binance_get(emulator, "/api/v3/account", key, secret)

    assert (status, body["code"]) == expected


def test_binance_refuses_a_timestamp_outside_the_receive_window(emulator: Emulator) -> None:
    stale = int(time.time() * 1000) - 10_000
    query = urllib.parse.urlencode({"timestamp": stale, "recvWindow": 5000})
    signature = hmac.new(b"bsecret", query.encode(), hashlib.sha256).hexdigest()
    url = f"{emulator.url_for('binance')}/api/v3/account?{query}&signature={signature}"

    status, body = call(urllib.request.Request(url, headers={"X-MBX-APIKEY": "bkey"}))

    assert (status, body["code"]) == (400, -1021)


def test_kraken_balance_needs_a_valid_signature_and_a_growing_nonce(emulator: Emulator) -> None:
    nonce = int(time.time() * 1000)

    first = kraken_post(emulator, "/0/private/BalanceEx", "kkey", KRAKEN_SECRET, nonce)
    replayed = kraken_post(emulator, "/0/private/BalanceEx", "kkey", KRAKEN_SECRET, nonce)
    forged = kraken_post(emulator, "/0/private/BalanceEx", "kkey", base64.b64encode(b"x").decode(), nonce + 1)
    unknown = kraken_post(emulator, "/0/private/BalanceEx", "nobody", KRAKEN_SECRET, nonce + 2)

    assert first["error"] == []
    assert first["result"]["XXBT"]["balance"] == "3"
    assert replayed["error"] == ["EAPI:Invalid nonce"]
    assert forged["error"] == unknown["error"] == ["EAPI:Invalid key"]


def test_kraken_signature_covers_the_body(emulator: Emulator) -> None:
    nonce = int(time.time() * 1000)
    body = urllib.parse.urlencode({"nonce": nonce})
    message = b"/0/private/BalanceEx" + hashlib.sha256(str(nonce).encode() + body.encode()).digest()
    signature = base64.b64encode(hmac.new(base64.b64decode(KRAKEN_SECRET), message, hashlib.sha512).digest())
    tampered = urllib.parse.urlencode({"nonce": nonce, "asset": "BTC"}).encode()
    request = urllib.request.Request(
        emulator.url_for("kraken") + "/0/private/BalanceEx",
        data=tampered,
        headers={"API-Key": "kkey", "API-Sign": signature.decode()},
    )

    assert call(request)[1]["error"] == ["EAPI:Invalid key"]


def test_every_private_request_is_refused_without_a_signature(emulator: Emulator) -> None:
    request = urllib.request.Request(emulator.url_for("binance") + "/api/v3/myTrades?symbol=BTCUSDT")

    status, body = call(request)

    assert (status, body["code"]) == (401, -2015)


def account(**balances: str) -> Account:
    return Account("k", "s", {asset: Decimal(amount) for asset, amount in balances.items()})


def buy(
    acct: Account, amount: str, price: str, tif: str = "IOC", fault: OrderFault | None = None, cid: str = "c1"
):
    return place(
        acct,
        BTC_USDT,
        BOOK,
        side="buy",
        price=Decimal(price),
        amount=Decimal(amount),
        client_order_id=cid,
        time_in_force=tif,
        fees=FEES,
        fault=fault or OrderFault(),
    )


def test_ioc_takes_levels_up_to_the_limit_and_expires_the_rest() -> None:
    acct = account(USDT="100000")

    order = buy(acct, "0.5", "60000")

    assert (order.state, order.filled, order.cost) == (OrderState.EXPIRED, Decimal("0.3"), Decimal("18000"))
    assert acct.balances == {
        "BTC": Decimal("0.3"),
        "USDT": Decimal("100000") - Decimal("18000") * Decimal("1.001"),
    }


def test_gtc_remainder_rests_open_and_a_cancel_closes_it() -> None:
    acct = account(USDT="100000")
    order = buy(acct, "0.5", "60000", tif="GTC")

    cancelled = cancel(acct, order, BOOK, fees=FEES, fault=OrderFault())

    assert cancelled.state is OrderState.CANCELED
    assert cancelled.filled == Decimal("0.3")
    with pytest.raises(Refused) as again:
        cancel(acct, order, BOOK, fees=FEES, fault=OrderFault())
    assert again.value.refusal is Refusal.UNKNOWN_ORDER


def test_partial_fraction_is_rounded_down_to_the_amount_step() -> None:
    order = buy(account(USDT="100000"), "0.33333", "60010", fault=OrderFault(fill_fraction=Decimal("0.5")))

    assert order.filled == Decimal("0.16666")


@pytest.mark.parametrize(
    ("funds", "refusal"),
    [({"USDT": "100"}, Refusal.INSUFFICIENT), ({"USDT": "100000"}, Refusal.DUPLICATE)],
)
def test_refused_orders_move_nothing(funds: dict[str, str], refusal: Refusal) -> None:
    acct = account(**funds)
    if refusal is Refusal.DUPLICATE:
        buy(acct, "0.1", "59000", tif="GTC")  # rests open, keeping its client id taken
    before = dict(acct.balances)

    with pytest.raises(Refused) as refused:
        buy(acct, "0.1", "60010")

    assert refused.value.refusal is refusal
    assert acct.balances == before


def test_account_specs_parse_and_bad_ones_do_not_echo_the_secret() -> None:
    spec = parse_account("kraken:k1:c2VjcmV0:BTC=1,usdt=30000", ("binance", "kraken"))

    assert (spec.venue, spec.key, spec.secret) == ("kraken", "k1", "c2VjcmV0")
    assert spec.balances == {"BTC": Decimal("1"), "USDT": Decimal("30000")}
    with pytest.raises(CommandError) as bad:
        parse_account("okx:k1:topsecret:BTC=1", ("binance", "kraken"))
    assert "topsecret" not in str(bad.value)


def test_funding_takes_the_keys_from_the_environment_and_names_them_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    venues = ("binance", "kraken")
    with pytest.raises(CommandError, match="ARB_BINANCE_API_KEY and ARB_BINANCE_API_SECRET"):
        parse_funding("binance:BTC=1", venues)
    monkeypatch.setenv("ARB_BINANCE_API_KEY", "env-key")
    monkeypatch.setenv("ARB_BINANCE_API_SECRET", "env-secret")

    spec = parse_funding("binance:BTC=1,USDT=30000", venues)

    assert (spec.venue, spec.key, spec.secret) == ("binance", "env-key", "env-secret")
    assert spec.balances == {"BTC": Decimal("1"), "USDT": Decimal("30000")}


def test_fee_options_parse_and_bad_ones_are_refused() -> None:
    venues = ("binance", "kraken")

    assert parse_fee_asset("binance=Received", venues) == ("binance", "received")
    assert parse_fee_asset("binance=bnb", venues) == ("binance", "BNB")
    assert parse_fee_price("binance:bnb/usdt=600:0.25", venues) == FeePriceSpec(
        "binance", "BNB/USDT", Decimal("600"), Decimal("0.25")
    )
    assert parse_fee_price("binance:BNB/USDT=600", venues).discount == 0
    for bad_asset in ("okx=received", "binance=", "binance=b-n-b"):
        with pytest.raises(CommandError, match="--fee-asset"):
            parse_fee_asset(bad_asset, venues)
    for bad_price in ("binance:BNB=600", "binance:BNB/USDT=cheap", "okx:BNB/USDT=600", "binance:BNB/USDT=0"):
        with pytest.raises(CommandError, match="--fee-price"):
            parse_fee_price(bad_price, venues)


def test_a_simulated_feed_serves_the_simulated_market_as_it_moves() -> None:
    feed = simulated_feed("kraken", seed=7)
    with emulate("kraken") as emulator:
        emulator.feed_books("kraken", feed)
        served = emulator.book("kraken", "BTC/USDT")
        emulator.set_book("kraken", "BTC/USDT", [("1", "1")], [("2", "1")])  # a set book wins
        assert emulator.book("kraken", "BTC/USDT").bids == ((Decimal("1"), Decimal("1")),)

    market = simulated_book(7, "kraken", "BTC/USDT", served.version)
    assert (served.bids, served.asks) == (market.bids, market.asks)


@pytest.mark.slow
def test_run_emulator_serves_signed_orders_and_stops_on_sigterm(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    arrivals = tmp_path / "arrivals.jsonl"
    child = spawn(
        sys.executable,
        "manage.py",
        "run_emulator",
        "--venues",
        "binance",
        "--account",
        "binance:demo-key:demo-secret:BTC=0,USDT=30000",
        "--fee-asset",
        "binance=received",
        "--arrivals",
        str(arrivals),
        name="run-emulator",
    )
    child.wait_for("emulator running")
    url = next(line.split(": ", 1)[1] for line in child.output().splitlines() if line.startswith("binance: "))

    async def buy_there() -> Any:
        gateway = CcxtGateway(
            "binance", "binance", api_url=url, timeout_ms=3000, credentials=("demo-key", "demo-secret")
        )
        try:
            request = OrderRequest("BTC/USDT", Side.BUY, Decimal("0.1"), Decimal("60100"), "demo-1")
            return await gateway.create_order(request), await gateway.fetch_balance()
        finally:
            await gateway.close()

    result, balances = asyncio.run(buy_there())
    child.proc.send_signal(signal.SIGTERM)

    # Binance takes a buy's commission from the BTC it receives: 0.1% of 0.1 BTC.
    assert (result.status, balances["BTC"]) == ("filled", Decimal("0.0999"))
    assert [json.loads(line)["client_order_id"] for line in arrivals.read_text().splitlines()] == ["demo-1"]
    assert child.proc.wait(10) == 0
    assert "emulator stopped" in child.output()
    assert "demo-secret" not in child.output()


@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_ccxt_reads_an_order_by_venue_id_and_the_account_trades(emulator: Emulator, venue: str) -> None:
    emulator.set_book(venue, "BTC/USDT", [["59990", "1"]], [["60000", "0.3"], ["60010", "1"]])
    secret = "bsecret" if venue == "binance" else KRAKEN_SECRET
    key = "bkey" if venue == "binance" else "kkey"
    client_id = {"binance": "newClientOrderId", "kraken": "clientOrderId"}[venue]
    emulator.add_account(venue, key, secret, {"BTC": "0", "USDT": "100000"})

    async def session() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        exchange = ccxt.binance() if venue == "binance" else ccxt.kraken()
        exchange.urls = {
            **exchange.urls,
            "api": rewrite_api_urls(exchange.urls["api"], emulator.url_for(venue)),
        }
        exchange.apiKey, exchange.secret, exchange.enableRateLimit = key, secret, False
        exchange.options["fetchMarkets"] = {"types": ["spot"]}
        exchange.options["fetchMargins"] = False
        exchange.options["fetchCurrencies"] = False
        try:
            placed = await exchange.create_order(
                "BTC/USDT", "limit", "buy", "0.5", "60010", {client_id: "raw-1", "timeInForce": "IOC"}
            )
            return await exchange.fetch_order(placed["id"], "BTC/USDT"), await exchange.fetch_my_trades(
                "BTC/USDT"
            )
        finally:
            await exchange.close()

    order, trades = asyncio.run(session())

    assert (order["clientOrderId"], order["status"], order["filled"]) == ("raw-1", "closed", 0.5)
    assert [(trade["price"], trade["amount"], trade["order"]) for trade in trades] == [
        (60000.0, 0.3, order["id"]),
        (60010.0, 0.2, order["id"]),
    ]
    assert sum(trade["fee"]["cost"] for trade in trades) == pytest.approx((18000 + 12002) * 0.001)
