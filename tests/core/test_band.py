"""The price band: a book far from the market's consensus is refused."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import NOW, levels, quote
from trading.core.band import PriceBand, judge, median, mid, reference_mid
from trading.core.types import Quote

BAND = PriceBand(max_bps=Decimal(500), window_ms=10_000, history=3)


def around(venue: str, price: str, received_ts: int = NOW) -> Quote:
    p = Decimal(price)
    return quote(venue, levels((str(p - 5), "1")), levels((str(p + 5), "1")), received_ts=received_ts)


def verdict(book: Quote, peers: list[Quote], own: list[Decimal] | None = None) -> bool:
    """True when the band lets `book` through."""
    return judge(book, reference_mid(book, peers, own or [], BAND, NOW), BAND) is None


def test_a_book_at_twice_the_market_is_refused_and_one_near_it_taken() -> None:
    peers = [around("b", "60000"), around("c", "60010")]

    assert not verdict(around("a", "120000"), peers)
    assert verdict(around("a", "61000"), peers)


def test_the_median_outvotes_one_absurd_peer() -> None:
    peers = [around("b", "60000"), around("c", "60010"), around("d", "1000000")]

    assert verdict(around("a", "60020"), peers)


def test_stale_peers_and_the_venues_own_book_do_not_count() -> None:
    stale = around("b", "120000", received_ts=NOW - 10_001)
    own = around("a", "120000")

    assert verdict(around("a", "60000"), [stale, own])


def test_a_venue_alone_is_judged_by_its_own_recent_mids_and_its_first_book_taken() -> None:
    own = [Decimal("60000"), Decimal("60010"), Decimal("59990")]

    assert not verdict(around("a", "90000"), [], own)
    assert verdict(around("a", "60100"), [], own)
    assert verdict(around("a", "90000"), [])


def test_no_band_when_the_limit_is_zero() -> None:
    off = PriceBand(max_bps=Decimal(0))
    book = around("a", "120000")

    assert judge(book, reference_mid(book, [around("b", "60000")], [], off, NOW), off) is None


def test_a_breach_says_how_far_off_the_book_was() -> None:
    book = around("a", "66000")
    breach = judge(book, Decimal(60000), BAND)

    assert breach is not None
    assert breach.departure_bps == Decimal(1000)
    assert "1000 bps" in breach.describe()


@given(
    peers=st.lists(st.integers(50_000, 70_000), min_size=1, max_size=7),
    offset_bps=st.integers(-10_000, 10_000),
)
def test_a_book_is_taken_exactly_when_its_mid_is_within_the_band_of_the_median(
    peers: list[int], offset_bps: int
) -> None:
    books = [around(f"p{i}", str(price)) for i, price in enumerate(peers)]
    reference = median([mid(book) for book in books])
    price = reference * (1 + Decimal(offset_bps) / 10_000)
    book = quote("a", levels((str(price - 1), "1")), levels((str(price + 1), "1")))

    assert verdict(book, books) == (abs(offset_bps) <= 500)
