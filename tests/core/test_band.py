"""The price band: a book far from the market's consensus is refused."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.core.builders import NOW, levels, quote
from trading.core.band import PriceBand, Seen, judge, level, market, median, mid, seen
from trading.core.types import Quote

BAND = PriceBand(max_bps=Decimal(500), window_ms=10_000, history=3)


def around(venue: str, price: str, received_ts: int = NOW) -> Quote:
    p = Decimal(price)
    return quote(venue, levels((str(p - 5), "1")), levels((str(p + 5), "1")), received_ts=received_ts)


class Market:
    """Books of several venues, judged as they come, as the listener and the collector do."""

    def __init__(self, band: PriceBand = BAND) -> None:
        self.band = band
        self.recent: dict[str, list[Seen]] = {}

    def offer(self, book: Quote, now: int = NOW) -> bool:
        reference = market(level(entries, self.band, now) for entries in self.recent.values())
        self.recent.setdefault(book.venue, []).append(seen(book))
        return judge(book, reference, self.band) is None


def test_a_book_at_twice_the_market_is_refused_and_one_near_it_taken() -> None:
    books = Market()
    assert books.offer(around("b", "60000"))
    assert books.offer(around("c", "60010"))

    assert not books.offer(around("a", "120000"))
    assert books.offer(around("a", "61000"))


def test_a_venue_astray_from_the_start_is_outvoted_once_the_others_have_spoken() -> None:
    books = Market()
    verdicts = [
        books.offer(around("a", "120000")),  # first of all, with nothing to compare it to
        books.offer(around("b", "60000")),  # against a alone
        books.offer(around("c", "60010")),  # against the middle of a and b: no market either
        books.offer(around("a", "120000")),
        books.offer(around("b", "60005")),
        books.offer(around("c", "60000")),
    ]

    assert verdicts == [True, False, False, False, True, True]


def test_a_venue_alone_is_judged_by_its_own_recent_books_and_its_first_book_taken() -> None:
    books = Market()
    for price in ("60000", "60010", "59990"):
        assert books.offer(around("a", price))

    assert not books.offer(around("a", "90000"))
    assert books.offer(around("a", "60100"))


def test_a_real_move_is_followed_after_a_few_books() -> None:
    books = Market()
    books.offer(around("a", "60000"))
    books.offer(around("b", "60000"))
    verdicts = [books.offer(around(venue, "66000")) for venue in "abab"]

    assert verdicts == [False, False, True, True]


def test_books_older_than_the_window_do_not_count() -> None:
    books = Market()
    books.offer(around("b", "120000", received_ts=NOW - 10_001))

    assert books.offer(around("a", "60000"))


def test_no_band_when_the_limit_is_zero() -> None:
    books = Market(PriceBand(max_bps=Decimal(0)))
    books.offer(around("b", "60000"))

    assert books.offer(around("a", "120000"))


def test_a_breach_says_how_far_off_the_book_was() -> None:
    breach = judge(around("a", "66000"), Decimal(60000), BAND)

    assert breach is not None
    assert breach.departure_bps == Decimal(1000)
    assert "1000 bps" in breach.describe()


def test_a_level_is_the_median_of_the_last_books_in_the_window() -> None:
    recent = [Seen(Decimal(price), NOW) for price in ("1", "100", "101", "99")]

    assert level(recent, BAND, NOW) == Decimal(100)
    assert level([Seen(Decimal(5), NOW - 10_001)], BAND, NOW) is None
    assert mid(around("a", "100")) == Decimal(100)


@given(
    prices=st.lists(st.integers(50_000, 70_000), min_size=1, max_size=7),
    offset_bps=st.integers(-10_000, 10_000),
)
def test_a_book_is_taken_exactly_when_its_mid_is_within_the_band_of_the_median(
    prices: list[int], offset_bps: int
) -> None:
    reference = median([Decimal(price) for price in prices])
    price = reference * (1 + Decimal(offset_bps) / 10_000)
    book = quote("a", levels((str(price - 1), "1")), levels((str(price + 1), "1")))

    assert (judge(book, reference, BAND) is None) == (abs(offset_bps) <= 500)
