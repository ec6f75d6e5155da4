"""The exchange emulator and the ccxt gateway, through the real ccxt client: books in both
dialects, error translation, markets loaded once, and the venue registry."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import ccxt.async_support as ccxt
import pytest

from devtools.emulator import DIALECTS, Emulator, binance, emulate, kraken
from tests.deadlines import scaled
from trading.core.types import Quote, Side
from trading.core.validate import QuoteRejected
from trading.models import Venue
from trading.venues.base import (
    InsufficientBalance,
    OrderRejected,
    OrderRequest,
    TemporaryVenueError,
    VenueError,
)
from trading.venues.ccxt_gateway import CcxtGateway, rewrite_api_urls, translate_error
from trading.venues.registry import book_gateway
from trading.venues.simulated import SimulatedGateway


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with emulate() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_venues(emulator: Emulator) -> Iterator[None]:
    yield
    emulator.reset()


def fetch_book(emulator: Emulator, venue: str, symbol: str = "BTC/USDT", timeout_ms: int = 500) -> Quote:
    """One book through a fresh gateway, closed afterwards, as the collector does it."""

    async def fetch() -> Quote:
        gateway = CcxtGateway(venue, venue, api_url=emulator.url_for(venue), timeout_ms=timeout_ms)
        try:
            return await gateway.fetch_order_book(symbol, 3)
        finally:
            await gateway.close()

    return asyncio.run(fetch())


def test_api_urls_are_moved_under_the_override() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "fapiPublic": "https://fapi.binance.com/fapi/v1",
        "nested": {"spot": "https://api.kraken.com"},
    }

    moved = rewrite_api_urls(urls, "http://127.0.0.1:8123/binance")

    assert moved == {
        "public": "http://127.0.0.1:8123/binance/api/v3",
        "fapiPublic": "http://127.0.0.1:8123/binance/fapi/v1",
        "nested": {"spot": "http://127.0.0.1:8123/binance"},
    }


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_book_in_each_dialect_reaches_a_quote_exactly(emulator: Emulator, dialect: str) -> None:
    emulator.set_book(dialect, "ETH/USDT", [["3000.12", "1.2345"], ["2999.5", "7"]], [["3001", "0.5"]])

    quote = fetch_book(emulator, dialect, "ETH/USDT")

    assert (quote.venue, quote.symbol, quote.seq) == (dialect, "ETH/USDT", 0)
    assert quote.bids == ((Decimal("3000.12"), Decimal("1.2345")), (Decimal("2999.5"), Decimal("7")))
    assert quote.asks == ((Decimal("3001"), Decimal("0.5")),)
    assert quote.received_ts > 0


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_default_book_is_sane(emulator: Emulator, dialect: str) -> None:
    quote = fetch_book(emulator, dialect)

    assert Decimal(0) < quote.best_bid < quote.best_ask
    assert len(quote.bids) == len(quote.asks) == 3


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize(
    "fault", [{"status": 429}, {"status": 500}, {"status": 502}, {"status": 503}, {"delay_s": 1.0}]
)
def test_overload_and_timeouts_are_temporary_errors(emulator: Emulator, dialect: str, fault: dict) -> None:
    emulator.set_fault(dialect, **fault)

    with pytest.raises(TemporaryVenueError, match=dialect):
        fetch_book(emulator, dialect, timeout_ms=300)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_cleared_fault_answers_again(emulator: Emulator, dialect: str) -> None:
    emulator.set_fault(dialect, status=503)
    with pytest.raises(TemporaryVenueError):
        fetch_book(emulator, dialect)

    emulator.clear_fault(dialect)

    assert fetch_book(emulator, dialect).best_bid > 0


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_unlisted_symbol_is_a_lasting_venue_error(emulator: Emulator, dialect: str) -> None:
    with pytest.raises(VenueError, match="DOGE/USDT") as raised:
        fetch_book(emulator, dialect, "DOGE/USDT")

    assert not isinstance(raised.value, TemporaryVenueError)


def test_crossed_book_from_the_venue_is_rejected(emulator: Emulator) -> None:
    emulator.set_book("kraken", "BTC/USDT", [["60010", "1"]], [["60000", "1"]])

    with pytest.raises(QuoteRejected) as raised:
        fetch_book(emulator, "kraken")

    assert raised.value.reason == "crossed"


@pytest.mark.parametrize(
    ("dialect", "market_paths"),
    [("binance", ["/api/v3/exchangeInfo"]), ("kraken", ["/0/public/Assets", "/0/public/AssetPairs"])],
)
def test_markets_load_once_per_process_not_per_gateway(dialect: str, market_paths: list[str]) -> None:
    # A venue name of its own: the markets of this API root have never been loaded before.
    with Emulator({f"{dialect}-markets-once": DIALECTS[dialect]}) as emulator:
        venue = f"{dialect}-markets-once"

        async def two_rounds() -> None:
            for _ in range(2):
                gateway = CcxtGateway(venue, dialect, api_url=emulator.url_for(venue), timeout_ms=2000)
                try:
                    await gateway.fetch_order_book("BTC/USDT", 3)
                finally:
                    await gateway.close()

        asyncio.run(two_rounds())

        assert [emulator.request_count(venue, path) for path in market_paths] == [1] * len(market_paths)
        assert emulator.request_count(venue) == len(market_paths) + 2


def test_orders_are_refused_until_supported() -> None:
    gateway = CcxtGateway("binance", "binance", api_url="http://127.0.0.1:9/binance")
    request = OrderRequest("BTC/USDT", Side.BUY, Decimal("0.1"), Decimal("60000"), "leg-1")

    with pytest.raises(VenueError, match="does not support orders"):
        asyncio.run(gateway.create_order(request))
    assert gateway.capabilities == frozenset({"books"})
    asyncio.run(gateway.close())


def test_unknown_exchange_is_a_venue_error() -> None:
    with pytest.raises(VenueError, match="nosuchexchange"):
        CcxtGateway("x", "nosuchexchange")


@pytest.mark.parametrize(
    ("ccxt_error", "ours"),
    [
        (ccxt.InsufficientFunds, InsufficientBalance),
        (ccxt.InvalidOrder, OrderRejected),
        (ccxt.RequestTimeout, TemporaryVenueError),
        (ccxt.DDoSProtection, TemporaryVenueError),
        (ccxt.AuthenticationError, VenueError),
    ],
)
def test_ccxt_errors_become_our_named_errors(ccxt_error: type[Exception], ours: type[VenueError]) -> None:
    translated = translate_error("binance", ccxt_error("details"))

    assert type(translated) is ours
    assert str(translated) == f"binance: {ccxt_error.__name__}: details"


def test_emulator_counts_requests_and_serves_the_real_dialect(emulator: Emulator) -> None:
    before = emulator.request_count("kraken", "/0/public/Time")

    with urllib.request.urlopen(emulator.url_for("kraken") + "/0/public/Time", timeout=scaled(5)) as response:
        body = json.load(response)

    assert body["error"] == []
    assert body["result"]["unixtime"] > 0
    assert emulator.request_count("kraken", "/0/public/Time") == before + 1


def test_emulator_answers_unknown_paths_with_404(emulator: Emulator) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(emulator.url_for("binance") + "/api/v3/nothing", timeout=scaled(5))

    assert raised.value.code == 404


def test_dialects_have_one_shape() -> None:
    for dialect in (binance, kraken):
        assert all(method in {"GET", "POST", "DELETE"} for method, _ in dialect.ROUTES)
        assert dialect.fault_reply(429).status == 429


def test_registry_builds_the_gateway_for_each_kind(settings) -> None:
    settings.SIMULATION_SEED = 11
    simulated = book_gateway(Venue(name="sim-a", kind=Venue.Kind.SIMULATED))
    exchange = book_gateway(Venue(name="bin", kind=Venue.Kind.CCXT, ccxt_id="binance"))

    assert isinstance(simulated, SimulatedGateway)
    assert simulated.seed == 11
    assert isinstance(exchange, CcxtGateway)
    assert exchange.name == "bin"
    assert asyncio.run(simulated.fetch_order_book("BTC/USDT", 5)).venue == "sim-a"
    asyncio.run(exchange.close())
