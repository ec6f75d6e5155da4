"""The replay: recorded quotes through the live strategy, with fees, latency, TTL and inventory.

It mirrors the listener: the latest book per venue, `find_decisions` on the pairs involving the
venue whose book just changed, and one opportunity per crossing that persists (a rejected crossing
that becomes tradeable opens a new, accepted one). An accepted opportunity is taken the way the
trade worker takes it: dropped when its slower leg would arrive after the strategy's TTL, else funds
are reserved on both venues and each leg is sent with its guard price. A leg fills through the one
fill model against its venue's book as it stands when the leg arrives (decision time plus the
venue's latency), not as it stood at the decision. Once both legs have landed, the one settlement
policy of live trading (trading.core.policy) says what follows: a retry of what a leg missed within
its guard, or a hedge of what stays one-sided, each landing its venue's latency later; a position
the policy leaves open is marked at its venue's market when the run ends. Balances are pre-funded
per venue and never transferred, so inventory drifts and a side that runs out stops trading.

Time is the quote's received time; nothing at a decision looks at a quote received after it.
Quotes received at the same moment are applied together before any decision (as the listener
would see them if they came in one breath), so the result does not depend on the order in which
they were recorded, and a leg that arrives at its decision's moment fills against the books the
decision saw.
"""

from __future__ import annotations

import gc
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from backtest.engine import scan
from backtest.engine.arrays import QuoteArrays
from backtest.engine.records import Result, SeenOpportunity, SimTrade
from trading.core import ledger, liquidity
from trading.core.fills import fill, totals, within
from trading.core.gaps import GapKey, track_gaps
from trading.core.ledger import Charge, Execution, Movement
from trading.core.liquidity import Claim
from trading.core.policy import Done, Role, Rules, Send, next_step
from trading.core.strategy import find_decisions
from trading.core.types import ZERO, Decision, Fill, Quote, Side, StrategyParams, VenueState, split_symbol

BookAt = Callable[[str, int], Quote | None]
TTL_EXCEEDED = "ttl_exceeded"


@dataclass(frozen=True)
class Setup:
    """What a replay models: the strategy, each venue (fees, rules, starting balances), each
    venue's decision-to-arrival latency in ms (zero when not given), and the settlement policy's
    retries, hedge attempts and hedge loss limit (live trading's defaults unless given)."""

    params: StrategyParams
    venues: Mapping[str, VenueState]
    latency_ms: Mapping[str, int] = field(default_factory=dict)
    retries: int = 2
    hedge_attempts: int = 2
    hedge_max_loss_bps: Decimal = Decimal(50)

    def latency(self, venue: str) -> int:
        return self.latency_ms.get(venue, 0)

    def rules(self) -> Rules:
        return Rules(
            retries=self.retries,
            hedge_attempts=self.hedge_attempts,
            hedge_max_loss_bps=self.hedge_max_loss_bps,
            steps={name: state.rules.amount_step for name, state in self.venues.items()},
            ticks={name: state.rules.price_tick for name, state in self.venues.items()},
        )


@dataclass(order=True)
class PendingLeg:
    """An order on its way to its venue: a leg, a retry of one, or a hedge."""

    arrival_ms: int
    order: int
    trade: SimTrade = field(compare=False)
    send: Send = field(compare=False)
    held: Movement = field(compare=False)  # what it set aside until it lands


class Replay:
    """One replay of one symbol. `run` takes the quotes chunk by chunk and returns the Result.

    With `exact=True` every quote goes through the strategy one by one; otherwise the vectorized
    scan picks the quotes at which a decision can happen and only those go through it. Both take
    the same decisions on the same data (a test holds them to it).
    """

    def __init__(self, setup: Setup, symbol: str) -> None:
        self.setup = setup
        self.params = setup.params
        self.base, self.quote_asset = split_symbol(symbol)
        # Our own copies: the replay moves these balances, the caller's stay as they were.
        self.venues = {
            name: replace(state, balances=dict(state.balances)) for name, state in setup.venues.items()
        }
        self.result = Result(symbol=symbol)
        self.books: dict[str, Quote] = {}
        self.open: dict[GapKey, SeenOpportunity] = {}
        self.pending: list[PendingLeg] = []
        # Per venue: its latest snapshot's (received, seq) and what each trade took of it.
        self.taken: dict[str, tuple[tuple[int, int], dict[str, Claim]]] = {}
        self._orders = itertools.count()
        self.rules = setup.rules()
        self._crossed_before = False
        self._venue_order: tuple[str, ...] = ()
        self._scratch = scan.Scratch()

    # --- driving -------------------------------------------------------------------------------

    def run(
        self,
        chunks: Iterable[QuoteArrays],
        *,
        exact: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        with _collector_paused():
            return self._run(chunks, exact, progress)

    def _run(
        self, chunks: Iterable[QuoteArrays], exact: bool, progress: Callable[[int], None] | None
    ) -> Result:
        for chunk in whole_moments(chunks):
            self._venue_order = chunk.venues
            found = scan.scan_chunk(
                chunk, self._carried_prices("bid"), self._carried_prices("ask"), self._scratch
            )
            self._note_chunk(chunk, found.gaps)
            if exact:
                self._every_moment(chunk)
            else:
                self._crossing_rows(chunk, found.venues, found.crossing)
            if progress is not None:
                progress(len(chunk))
        return self.finish()

    def finish(self) -> Result:
        """Settle orders still in flight against the last books, mark what the trades left open
        at their venues' last mids, close open crossings."""
        while self.pending:
            self._settle(heapq.heappop(self.pending), lambda venue, _ms: self.books.get(venue))
        for trade in self.result.trades:
            if trade.unhedged:
                trade.mark = self._mid(trade)
        for key in list(self.open):
            self._close(key)
        self.result.balances = {name: dict(state.balances) for name, state in self.venues.items()}
        return self.result

    def _note_chunk(self, chunk: QuoteArrays, gaps: scan.Floats) -> None:
        result = self.result
        result.rows += len(chunk)
        result.first_ms = int(chunk.ts[0]) if result.first_ms is None else result.first_ms
        result.last_ms = int(chunk.ts[-1])
        minutes, widest = scan.widest_gap_by_minute(chunk.ts, gaps)
        result.gap_minutes.append(minutes)
        result.gap_widest.append(widest)

    def _carried_prices(self, side: str) -> scan.Floats:
        """Each venue's best bid or ask before the chunk, NaN where it has no book yet."""
        prices = np.full(len(self._venue_order), np.nan)
        for index, name in enumerate(self._venue_order):
            book = self.books.get(name)
            if book is not None:
                prices[index] = float(book.best_bid if side == "bid" else book.best_ask)
        return prices

    def _every_moment(self, chunk: QuoteArrays) -> None:
        start = 0
        for end in scan.moment_ends(chunk.ts).tolist():
            now = int(chunk.ts[end])
            self._settle_due(now, lambda venue, _ms: self.books.get(venue))
            for row in range(start, end + 1):
                self._put_book(chunk.quote(row))
            self._step(_changed(chunk, start, end), self.books, now)
            start = end + 1

    def _put_book(self, quote: Quote) -> None:
        known = quote.venue in self.books
        self.books[quote.venue] = quote
        if not known:  # keep venue order fixed: pairs are decided in the same order on every path
            order = {name: i for i, name in enumerate(self._venue_order)}
            self.books = dict(sorted(self.books.items(), key=lambda item: order[item[0]]))

    def _crossing_rows(
        self, chunk: QuoteArrays, venues: scan.VenueRows, crossing: npt.NDArray[np.bool_]
    ) -> None:
        """Decide at the moments the scan finds `crossing` (by row), settling legs on the way."""
        ends = scan.moment_ends(chunk.ts)
        starts = np.r_[0, ends[:-1] + 1]
        crossed = crossing[ends]  # as each moment leaves the books
        lookup = _ChunkBooks(chunk, venues, dict(self.books))
        for moment in scan.rows_to_decide(crossed, self._crossed_before).tolist():
            end = int(ends[moment])
            now = int(chunk.ts[end])
            self._settle_due(now, lookup.book_at)
            self._step(_changed(chunk, int(starts[moment]), end), lookup.books_at(end), now)
        self._crossed_before = bool(crossed[-1])
        # Legs arriving before the chunk's last quote would settle at a quote of this chunk that
        # decides nothing: settle them now, while their arrival books are at hand.
        self._settle_due(int(chunk.ts[-1]), lookup.book_at)
        self.books = lookup.books_at(len(chunk) - 1)

    # --- one decision --------------------------------------------------------------------------

    def _step(self, changed: frozenset[str], books: Mapping[str, Quote], now: int) -> None:
        """Decide on the pairs of the venues whose books changed at `now`; where books cross, on
        what other orders have not already taken from them (as the listener does)."""
        decisions = find_decisions(books, self.venues, self.params, now, involving=changed)
        left = self._untaken(books, decisions) if decisions else books
        if left is not books:
            decisions = find_decisions(left, self.venues, self.params, now, involving=changed)
        self._record(changed, decisions, now, left)

    def _untaken(self, books: Mapping[str, Quote], decisions: list[Decision]) -> Mapping[str, Quote]:
        """The books of the decisions' venues less what is taken from them (a book taken whole is
        left out); `books` itself when nothing is taken from them."""
        names = liquidity.involved(decisions)
        return liquidity.books_less(
            books, {n: liquidity.total(self._claims(books[n]).values()) for n in names}
        )

    def _claims(self, book: Quote) -> dict[str, Claim]:
        """What trades took of `book`, by trade: kept for each venue's latest snapshot only, as a
        newer one starts afresh."""
        snapshot = (book.received_ts, book.seq)
        kept = self.taken.get(book.venue)
        if kept is None or kept[0] != snapshot:
            if kept is not None and kept[0] > snapshot:
                return {}  # an order landing on a book already replaced takes from nothing kept
            kept = self.taken[book.venue] = (snapshot, {})
        return kept[1]

    def _record(
        self, changed: frozenset[str], decisions: list[Decision], now: int, books: Mapping[str, Quote]
    ) -> None:
        """The listener's bookkeeping: persisting crossings are one opportunity; crossings of the
        changed venues that are gone close."""
        open_gaps = {key: gap.state for key, gap in self.open.items()}
        changes = track_gaps(open_gaps, decisions, self.result.symbol, changed)
        self.result.crossings += changes.crossings
        for key in changes.persisting:
            self.open[key].ticks += 1
            self.open[key].last_ms = now
        replaced = {key: self.open[key] for key in changes.closed}
        for key in changes.closed:
            self._close(key)
        for decision in changes.opened:
            seen = self.open[decision.key] = self._open(decision, now, books)
            if decision.key in replaced:
                seen.take_over(replaced[decision.key])

    def _open(self, decision: Decision, now: int, books: Mapping[str, Quote]) -> SeenOpportunity:
        sized = decision.sized
        seen = SeenOpportunity(
            buy_venue=decision.buy_venue,
            sell_venue=decision.sell_venue,
            accepted=decision.accepted,
            reason=decision.reason,
            first_ms=now,
            last_ms=now,
            amount=None if sized is None else sized.buy.amount,
            expected_net=None if sized is None else sized.net_profit,
        )
        if decision.accepted:
            seen.trade = self._take(decision, now, books)
        else:
            self.result.rejected[decision.reason] += 1
        return seen

    def _close(self, key: GapKey) -> None:
        self.result.opportunities.append(self.open.pop(key))

    # --- trading -------------------------------------------------------------------------------

    def _take(self, decision: Decision, now: int, books: Mapping[str, Quote]) -> SimTrade | None:
        """Reserve what both legs of an accepted decision take from the books it saw and send
        them; the trade, or None when it is dropped."""
        sized = decision.sized
        assert sized is not None  # an accepted decision is always sized
        slowest = max(self.setup.latency(sized.buy.venue), self.setup.latency(sized.sell.venue))
        if slowest > self.params.ttl_ms:
            # The trade worker drops an opportunity older than its TTL: this one would be.
            self.result.rejected[TTL_EXCEEDED] += 1
            return None
        trade = SimTrade(
            claimant=str(next(self._orders)),
            decided_ms=now,
            buy_venue=sized.buy.venue,
            sell_venue=sized.sell.venue,
            amount=sized.buy.amount,
            buy_price=sized.buy.price,
            sell_price=sized.sell.price,
            expected_net=sized.net_profit,
        )
        for role, leg in ((Role.BUY, sized.buy), (Role.SELL, sized.sell)):
            book = books[leg.venue]
            levels = book.asks if leg.side is Side.BUY else book.bids
            took = liquidity.taking(leg.side, fill(levels, leg.side, leg.amount, ZERO, limit=leg.worst_price))
            self._claims(book)[trade.claimant] = Claim(reserved=took)
            self._send(trade, Send(role, 0, leg.venue, leg.side, leg.amount, leg.worst_price), now)
        return trade

    def _send(self, trade: SimTrade, send: Send, now: int) -> None:
        """Hold the order's funds and put it on its way; it lands its venue's latency later."""
        held = self._hold(send)
        self._apply([held])
        arrival = now + self.setup.latency(send.venue)
        heapq.heappush(self.pending, PendingLeg(arrival, next(self._orders), trade, send, held))

    def _hold(self, send: Send) -> Movement:
        """What an order sets aside until it lands, as the live ledger holds it."""
        fee_rate = self.venues[send.venue].fees.taker
        asset = ledger.held_asset(self.result.symbol, send.side)
        return ledger.hold(
            send.venue, asset, ledger.hold_amount(send.side, send.amount, send.limit, fee_rate)
        )

    def _settle_due(self, now: int, book_at: BookAt) -> None:
        """Fill every leg that arrived before `now`, against its venue's book at arrival."""
        while self.pending and self.pending[0].arrival_ms < now:
            self._settle(heapq.heappop(self.pending), book_at)

    def _settle(self, leg: PendingLeg, book_at: BookAt) -> None:
        """Fill an order that landed against its venue's book then, release what it held, and
        once none of its trade's orders is on its way, take the policy's next step."""
        trade, send, held = leg.trade, leg.send, leg.held
        amount, value, fee = totals(self._fill_landed(trade, send, book_at(send.venue, leg.arrival_ms)))
        charges = (Charge(self.quote_asset, fee),) if fee else ()
        done = Execution(send.venue, self.result.symbol, send.side, amount, value, charges)
        self._apply([ledger.release(send.venue, held.asset, held.locked), *ledger.executed(done)])
        trade.landed(send, amount, value, fee)
        trade.settled_ms = max(trade.settled_ms, leg.arrival_ms)
        if trade.legs_open == 0:
            self._next_step(trade, leg.arrival_ms)

    def _fill_landed(self, trade: SimTrade, send: Send, book: Quote | None) -> list[Fill]:
        """The fills of `send` against `book` less what other trades took of it and what the
        trade's own orders filled; what they take becomes the trade's claim on the book, in
        place of the reservation it had."""
        if book is None:
            return []
        claims = self._claims(book)
        best = book.asks[0][0] if send.side is Side.BUY else book.bids[0][0]
        # Taking less from the book never brings a better price within the limit.
        fills = (
            self._fill_left(book, send, claims, trade.claimant) if within(best, send.side, send.limit) else []
        )
        filled = dict(claims.get(trade.claimant, Claim()).filled)
        for key, amount in liquidity.taking(send.side, fills).items():
            filled[key] = filled.get(key, ZERO) + amount
        claims[trade.claimant] = Claim(filled=filled)
        return fills

    def _fill_left(self, book: Quote, send: Send, claims: Mapping[str, Claim], claimant: str) -> list[Fill]:
        left = liquidity.book_less(book, liquidity.others(claims, claimant))
        levels = () if left is None else (left.asks if send.side is Side.BUY else left.bids)
        return fill(levels, send.side, send.amount, self.venues[send.venue].fees.taker, limit=send.limit)

    def _next_step(self, trade: SimTrade, now: int) -> None:
        step = next_step(trade.orders, self.rules)
        if isinstance(step, Send):
            trade.legs_open += 1
            self._send(trade, step, now)
        elif isinstance(step, Done):
            trade.outcome = step.outcome
            self.result.trades.append(trade)
            self.result.inventory.append((trade.settled_ms, self._inventory()))

    def _mid(self, trade: SimTrade) -> Decimal:
        """The market of the venue where `trade` left its position, as the run ended (the two
        prices expected at its decision when that venue has no book)."""
        venue = trade.buy_venue if trade.unhedged > ZERO else trade.sell_venue
        book = self.books.get(venue)
        if book is None:
            return (trade.buy_price + trade.sell_price) / 2
        return (book.best_bid + book.best_ask) / 2

    def _apply(self, movements: Iterable[Movement]) -> None:
        """The ledger's movements on the replay's free balances (what is held is simply not free)."""
        for movement in movements:
            balances = self.venues[movement.venue].balances
            balances[movement.asset] = balances.get(movement.asset, ZERO) + movement.free

    def _inventory(self) -> dict[str, Decimal]:
        return {name: state.free(self.base) for name, state in self.venues.items()}


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused (if it ran) for the context. A replay makes no
    reference cycles, but it keeps many objects for its result, and each full pass of the
    collector walks all of them and finds nothing to free."""
    running = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if running:
            gc.enable()


def whole_moments(chunks: Iterable[QuoteArrays]) -> Iterator[QuoteArrays]:
    """The same rows in chunks that never split a moment: the rows of a chunk's last moment are
    held back and lead the next chunk (the last chunk keeps them)."""
    held: QuoteArrays | None = None
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if held is not None and held.ts[-1] != chunk.ts[0]:
            yield held  # a whole moment by itself: no need to copy the chunk behind it
            held = None
        whole = chunk if held is None else held.then(chunk)
        cut = int(np.searchsorted(whole.ts, whole.ts[-1], side="left"))
        held = whole.slice(cut, len(whole))
        if cut > 0:
            yield whole.slice(0, cut)
    if held is not None:
        yield held


def _changed(chunk: QuoteArrays, start: int, end: int) -> frozenset[str]:
    """The venues that quoted in rows [start, end] of `chunk`."""
    return frozenset([chunk.venues[index] for index in chunk.venue[start : end + 1].tolist()])


class _ChunkBooks:
    """Each venue's latest exact book at any row or moment of a chunk, built only when asked for."""

    def __init__(self, chunk: QuoteArrays, venues: scan.VenueRows, before: dict[str, Quote]) -> None:
        self.chunk, self.venues, self.before = chunk, venues, before
        self._built: dict[int, Quote] = {}

    def _quote(self, row: int) -> Quote:
        quote = self._built.get(row)
        if quote is None:
            quote = self._built[row] = self.chunk.quote(row)
        return quote

    def books_at(self, row: int) -> dict[str, Quote]:
        books: dict[str, Quote] = {}
        for index, name in enumerate(self.chunk.venues):
            latest = self.venues.latest(index, row)
            book = self._quote(latest) if latest >= 0 else self.before.get(name)
            if book is not None:
                books[name] = book
        return books

    def book_at(self, venue: str, moment_ms: int) -> Quote | None:
        """The venue's book as of `moment_ms`: its last quote received at or before then."""
        row = int(self.chunk.ts.searchsorted(moment_ms, side="right")) - 1
        index = self.chunk.venues.index(venue)
        latest = self.venues.latest(index, row) if row >= 0 else -1
        return self._quote(latest) if latest >= 0 else self.before.get(venue)
