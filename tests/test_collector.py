"""Collection against the local exchange emulator with the real ccxt client, real Redis and
PostgreSQL: books reach Pub/Sub, the latest-book hash and the storage queue; failing venues back
off and go down (and up again) without touching the others; bad books are counted, not published.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from redis.client import PubSub

from devtools.emulator import Emulator, emulate
from tests.conftest import Child, emulated_venues, make_strategy, make_venue
from tests.deadlines import Deadline
from trading import collector
from trading.core.types import Quote
from trading.models import Venue
from trading.pubsub import Names, decode_quote, latest_books
from trading.tasks import collect_all_venues

BIDS = [["64000.5", "0.25"], ["63999", "1.5"], ["63990.25", "3"]]
ASKS = [["64001", "0.4"], ["64002.75", "2"], ["64010", "5.5"]]
# One injected failure per case: HTTP status, or a delay longer than the client's timeout.
FAULTS = {
    "rate_limited": ({"status": 429}, "429"),
    "server_error": ({"status": 500}, "500"),
    "unavailable": ({"status": 503}, "503"),
    "timeout": ({"delay_s": 1.5}, "RequestTimeout"),
}


@pytest.fixture(scope="module")
def running_emulator() -> Iterator[Emulator]:
    with emulate("binance", "kraken") as emulator:
        yield emulator


@pytest.fixture
def emulator(running_emulator: Emulator, settings) -> Iterator[Emulator]:
    settings.COLLECT_TIMEOUT_MS = 500
    yield running_emulator
    running_emulator.reset()


@pytest.fixture
def venues(emulator: Emulator) -> dict[str, Venue]:
    return emulated_venues(emulator)


@pytest.fixture
def prices(redis_client: redis.Redis, names: Names) -> Iterator[PubSub]:
    """Subscribed to both symbols' price channels, subscriptions confirmed."""
    pubsub = redis_client.pubsub()
    channels = [names.prices("BTC/USDT"), names.prices("ETH/USDT")]
    pubsub.subscribe(*channels)
    confirmed = 0
    deadline = Deadline(5)
    while confirmed < len(channels) and not deadline.passed():
        message = pubsub.get_message(timeout=1)
        confirmed += bool(message and message["type"] == "subscribe")
    assert confirmed == len(channels)
    yield pubsub
    pubsub.close()


def received(pubsub: PubSub, quiet_s: float = 0.5) -> list[Quote]:
    """Every price message that arrives until the channel has been quiet for `quiet_s`."""
    quotes = []
    while (message := pubsub.get_message(timeout=quiet_s)) is not None:
        if message["type"] == "message":
            quotes.append(decode_quote(message["data"]))
    return quotes


def levels(raw: list[list[str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((Decimal(price), Decimal(amount)) for price, amount in raw)


def pending(redis_client: redis.Redis, names: Names) -> list[Quote]:
    return [decode_quote(raw) for raw in redis_client.lrange(names.pending_quotes, 0, -1)]


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["binance", "kraken"])
def test_each_dialect_publishes_the_venue_book(
    dialect: str, emulator: Emulator, venues: dict[str, Venue], prices: PubSub, redis_client, names
) -> None:
    make_strategy(symbols=["BTC/USDT"])
    emulator.set_book(dialect, "BTC/USDT", BIDS, ASKS)

    assert collector.collect_venue(venues[dialect].pk) == 1

    [quote] = received(prices)
    assert (quote.venue, quote.symbol, quote.seq) == (dialect, "BTC/USDT", 1)
    assert quote.bids == levels(BIDS)
    assert quote.asks == levels(ASKS)
    assert latest_books(redis_client, "BTC/USDT") == {dialect: quote}
    assert pending(redis_client, names) == [quote]


@pytest.mark.django_db
def test_sequence_numbers_increase_per_venue_and_symbol(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub
) -> None:
    make_strategy(symbols=["BTC/USDT", "ETH/USDT"])

    for _ in range(3):
        assert collector.collect_venue(venues["binance"].pk) == 2
    assert collector.collect_venue(venues["kraken"].pk) == 2

    streams: dict[tuple[str, str], list[int]] = {}
    for quote in received(prices):
        streams.setdefault((quote.venue, quote.symbol), []).append(quote.seq)
    assert streams == {
        ("binance", "BTC/USDT"): [1, 2, 3],
        ("binance", "ETH/USDT"): [1, 2, 3],
        ("kraken", "BTC/USDT"): [1],
        ("kraken", "ETH/USDT"): [1],
    }


@pytest.mark.django_db
@pytest.mark.parametrize("failing", ["binance", "kraken"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_failing_venue_backs_off_then_goes_down_while_the_other_publishes(
    failing: str, fault: str, emulator: Emulator, venues: dict[str, Venue], prices: PubSub, settings
) -> None:
    settings.COLLECT_FAILURES_BEFORE_DOWN = 3
    make_strategy(symbols=["BTC/USDT"])
    healthy = "kraken" if failing == "binance" else "binance"
    injected, named_in_reason = FAULTS[fault]
    emulator.set_fault(failing, **injected)

    for attempt in range(1, 4):
        assert collector.collect_venue(venues[failing].pk) == 0
        assert collector.venues_to_collect() == [venues[healthy].pk]
        assert collector.collect_venue(venues[healthy].pk) == 1
        venues[failing].refresh_from_db()
        assert venues[failing].status == (Venue.Status.DOWN if attempt == 3 else Venue.Status.UP)

    assert named_in_reason in venues[failing].status_reason
    assert "3 failures in a row" in venues[failing].status_reason
    venues[healthy].refresh_from_db()
    assert venues[healthy].status == Venue.Status.UP
    assert [(q.venue, q.seq) for q in received(prices)] == [(healthy, 1), (healthy, 2), (healthy, 3)]


@pytest.mark.django_db
def test_back_off_grows_exponentially_up_to_the_maximum(
    emulator: Emulator, venues: dict[str, Venue], redis_client, names, settings
) -> None:
    settings.COLLECT_MAX_BACKOFF_SECONDS = 8
    make_strategy(symbols=["BTC/USDT"])
    emulator.set_fault("binance", status=429)

    waits = []
    for _ in range(5):
        collector.collect_venue(venues["binance"].pk)
        waits.append(redis_client.ttl(names.venue_key("binance", "backoff")))

    assert waits == [1, 2, 4, 8, 8]


@pytest.mark.django_db
def test_recovered_venue_is_marked_up_and_collected_again(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, settings
) -> None:
    settings.COLLECT_FAILURES_BEFORE_DOWN = 2
    make_strategy(symbols=["BTC/USDT"])
    venue = venues["kraken"]
    emulator.set_fault("kraken", status=503)
    for _ in range(2):
        collector.collect_venue(venue.pk)
    venue.refresh_from_db()
    went_down_at = venue.status_changed_at
    assert venue.status == Venue.Status.DOWN

    emulator.clear_fault("kraken")
    assert collector.collect_venue(venue.pk) == 1

    venue.refresh_from_db()
    assert (venue.status, venue.status_reason) == (Venue.Status.UP, "")
    assert venue.status_changed_at > went_down_at
    assert venue.pk in collector.venues_to_collect()
    assert [(q.venue, q.seq) for q in received(prices)] == [("kraken", 1)]


@pytest.mark.django_db
@pytest.mark.parametrize("dialect", ["binance", "kraken"])
@pytest.mark.parametrize(
    ("bids", "asks", "reason"),
    [
        ([["64010", "1"]], [["64000", "1"]], "crossed"),
        ([["64000", "1"]], [["64000", "1"]], "crossed"),
        ([["0", "1"]], [["64000", "1"]], "non_positive"),
        ([["63990", "1"]], [["64000", "-2"]], "non_positive"),
    ],
)
def test_bad_book_is_counted_and_never_published(
    dialect: str,
    bids: list[list[str]],
    asks: list[list[str]],
    reason: str,
    emulator: Emulator,
    venues: dict[str, Venue],
    prices: PubSub,
    redis_client,
    names,
) -> None:
    make_strategy(symbols=["BTC/USDT"])
    emulator.set_book(dialect, "BTC/USDT", bids, asks)

    assert collector.collect_venue(venues[dialect].pk) == 0

    assert received(prices) == []
    assert latest_books(redis_client, "BTC/USDT") == {}
    assert pending(redis_client, names) == []
    assert redis_client.hgetall(names.venue_key(dialect, "rejections")) == {reason.encode(): b"1"}
    venues[dialect].refresh_from_db()
    assert venues[dialect].status == Venue.Status.UP

    # A rejected book uses no sequence number: the next good one is the stream's first.
    emulator.set_book(dialect, "BTC/USDT", BIDS, ASKS)
    assert collector.collect_venue(venues[dialect].pk) == 1
    assert [q.seq for q in received(prices)] == [1]


@pytest.mark.django_db
def test_nothing_is_collected_without_an_active_strategy(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub
) -> None:
    make_strategy(symbols=["BTC/USDT"], active=False)
    asked_before = emulator.request_count("binance")

    assert collector.collect_venue(venues["binance"].pk) == 0
    assert received(prices) == []
    assert emulator.request_count("binance") == asked_before


@pytest.mark.django_db
def test_disabled_venues_are_not_collected(emulator: Emulator, venues: dict[str, Venue]) -> None:
    make_strategy(symbols=["BTC/USDT"])
    Venue.objects.filter(name="kraken").update(enabled=False)

    assert collector.venues_to_collect() == [venues["binance"].pk]
    assert collector.collect_venue(venues["kraken"].pk) == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_collects_every_venue_onto_pub_sub(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, celery_worker: Child
) -> None:
    make_strategy(symbols=["BTC/USDT"])
    emulator.set_book("kraken", "BTC/USDT", BIDS, ASKS)
    emulator.set_book("binance", "BTC/USDT", BIDS, ASKS)  # one market: both inside the price band

    collect_all_venues.delay()

    books: dict[str, Quote] = {}
    deadline = Deadline(30)
    while len(books) < 2 and not deadline.passed():
        books.update((quote.venue, quote) for quote in received(prices, quiet_s=1))
    assert set(books) == {"binance", "kraken"}, celery_worker.output()[-3000:]
    assert books["kraken"].bids == levels(BIDS)
    assert books["binance"].best_bid < books["binance"].best_ask


@pytest.mark.django_db
def test_simulated_venue_is_collected_like_an_exchange(prices: PubSub, redis_client) -> None:
    venue = make_venue("sim-a", kind=Venue.Kind.SIMULATED)
    make_strategy(symbols=["BTC/USDT", "ETH/USDT"])

    assert collector.collect_venue(venue.pk) == 2

    quotes = {quote.symbol: quote for quote in received(prices)}
    assert set(quotes) == {"BTC/USDT", "ETH/USDT"}
    assert all(q.venue == "sim-a" and q.seq == 1 and q.best_bid < q.best_ask for q in quotes.values())
    assert latest_books(redis_client, "ETH/USDT") == {"sim-a": quotes["ETH/USDT"]}


@pytest.mark.django_db
def test_a_book_off_the_price_band_is_counted_flagged_and_never_published(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, redis_client, names
) -> None:
    from trading import monitoring

    make_strategy(symbols=["BTC/USDT"])
    emulator.set_book("binance", "BTC/USDT", BIDS, ASKS)
    emulator.set_book("kraken", "BTC/USDT", [["128000", "1"]], [["128010", "1"]])  # twice the market
    assert collector.collect_venue(venues["binance"].pk) == 1

    assert collector.collect_venue(venues["kraken"].pk) == 0

    assert [quote.venue for quote in received(prices)] == ["binance"]
    assert set(latest_books(redis_client, "BTC/USDT")) == {"binance"}
    assert redis_client.hgetall(names.venue_key("kraken", "rejections")) == {b"price_band": b"1"}
    [condition] = monitoring.check_price_band(redis_client, 0)
    assert condition.key == "price_band:kraken"
    assert monitoring.check_price_band(redis_client, 0) == []  # nothing new since the last look
    # Back in the market; with two venues, kraken's own books outvote its spike after two rounds.
    emulator.set_book("kraken", "BTC/USDT", [["64005", "1"]], [["64006", "1"]])
    assert [collector.collect_venue(venues["kraken"].pk) for _ in range(3)] == [0, 0, 1]


@pytest.mark.django_db
def test_a_venue_alone_is_judged_by_its_own_recent_books(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, redis_client, names
) -> None:
    make_strategy(symbols=["BTC/USDT"])
    emulator.set_book("kraken", "BTC/USDT", BIDS, ASKS)
    assert collector.collect_venue(venues["kraken"].pk) == 1
    emulator.set_book("kraken", "BTC/USDT", [["1000000", "1"]], [["1000010", "1"]])

    assert collector.collect_venue(venues["kraken"].pk) == 0
    assert redis_client.hgetall(names.venue_key("kraken", "rejections")) == {b"price_band": b"1"}


@pytest.mark.django_db
def test_a_full_storage_queue_still_publishes_and_counts_what_it_could_not_keep(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, redis_client, names, settings
) -> None:
    settings.QUOTE_BUFFER_MAX = 2
    make_strategy(symbols=["BTC/USDT", "ETH/USDT"])

    for _ in range(2):
        assert collector.collect_venue(venues["binance"].pk) == 2

    assert len(received(prices)) == 4
    assert redis_client.llen(names.pending_quotes) == 2
    assert redis_client.hgetall(names.unstored_quotes) == {b"binance": b"2"}


@pytest.mark.django_db
def test_collection_goes_on_by_the_last_plan_while_the_database_is_away(
    emulator: Emulator, venues: dict[str, Venue], prices: PubSub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    make_strategy(symbols=["BTC/USDT"])
    assert sorted(collector.venues_to_collect()) == sorted(venue.pk for venue in venues.values())

    def unreachable() -> collector.CollectionPlan:
        raise OperationalError("connection refused")

    monkeypatch.setattr(collector, "read_plan", unreachable)

    assert sorted(collector.venues_to_collect()) == sorted(venue.pk for venue in venues.values())
    assert collector.collect_venue(venues["kraken"].pk) == 1
    assert [quote.venue for quote in received(prices)] == ["kraken"]
