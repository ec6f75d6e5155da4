"""The Pub/Sub listener's steps: decode a price event, update the book, decide, record, dispatch.

Each step is a method a test can call alone; `Listener.run` wires them to a Redis subscription.
Pub/Sub may drop messages (a slow subscriber, a reconnect), so every stream is numbered and the
listener counts what it missed, across reconnects too; nothing that must not be lost lives only
here. Every message ends as exactly one of: a tick, a venue's book withdrawn (a stale mark: the
venue's stream broke, trading.streamer), a rejection counted by reason, or ignored (a symbol this
listener does not own); nothing a message holds can stop the loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import Error as DjangoDatabaseError
from django.db import close_old_connections, transaction
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from arbsite.celery import app
from trading import book_claims, lifecycle, pubsub, risk_controls
from trading.clock import from_ms, now_ms, to_ms
from trading.core import band, liquidity, sequence
from trading.core.gaps import GapKey, GapState, track_gaps
from trading.core.strategy import find_decisions
from trading.core.types import Decision, Quote, StaleMark, StrategyParams, VenueState
from trading.core.validate import QuoteRejected
from trading.core_inputs import load_venue_states, strategy_params
from trading.models import Opportunity, StrategyConfig, Venue
from trading.observability import heartbeats, metrics
from trading.observability.logs import correlation, opportunity_correlation
from trading.venues.registry import tradeable

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
RESERVED_IDS = 64  # opportunity ids kept in hand, refilled once a second
HEARTBEAT_TTL_SECONDS = 10
Stream = tuple[str, str]  # (venue, symbol)


@dataclass
class Stats:
    """The listener's counters, carried by its heartbeat and exported by `/metrics`."""

    ticks: int = 0  # price events that updated a book and ran the strategy
    rejected: Counter[str] = field(default_factory=Counter)  # bad price events, by reason
    venue_rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (venue, reason)
    missed: int = 0  # messages a sequence gap says Pub/Sub never delivered
    restarts: int = 0  # streams followed anew once their next books confirmed a new numbering
    ignored: int = 0  # price events for symbols this listener does not own
    crossings: int = 0  # distinct crossings of two venues' books (ask below bid, fees aside)
    opportunities: int = 0  # opportunities opened on them: a settled crossing that persists re-arms
    dispatched: int = 0
    errors: int = 0  # steps that failed (database, Redis, or a fault in the code), each logged
    reconnects: int = 0
    stale: Counter[tuple[str, str]] = field(default_factory=Counter)  # books withdrawn, by (venue, kind)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected"] = dict(self.rejected)
        data["venue_rejected"] = by_venue(self.venue_rejected)
        data["stale"] = by_venue(self.stale)
        return data


def by_venue(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Counts by (venue, what) as {venue: {what: count}}."""
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for (venue, what), count in counts.items():
        nested[venue][what] = count
    return dict(nested)


def connect() -> redis.Redis:
    """The listener's Redis client. It does not retry a lost connection behind the listener's back
    (redis-py would resubscribe silently): the listener reconnects itself, and counts it."""
    return redis.Redis.from_url(settings.REDIS_URL, retry=Retry(NoBackoff(), 0))


def sequence_rules() -> sequence.SequenceRules:
    return sequence.SequenceRules(max_gap=settings.SEQ_MAX_GAP, confirmations=settings.SEQ_CONFIRMATIONS)


def price_band() -> band.PriceBand:
    return band.PriceBand(
        max_bps=Decimal(settings.PRICE_BAND_BPS),
        window_ms=settings.PRICE_BAND_WINDOW_MS,
        history=settings.PRICE_BAND_HISTORY,
    )


@dataclass
class OpenGap:
    """A crossing that is still there, and the Opportunity row it is now: one row however many
    ticks it lasts, until its trade settles and it may trade again."""

    opportunity_id: int
    state: GapState
    first_seen_ms: int
    last_seen_ms: int
    ticks: int = 1
    settled_ms: int | None = None  # when its opportunity was done with


class Listener:
    """Latest book per venue and symbol, the strategy, and the record of what it decided.

    `symbols` limits the listener to those symbols (their channels only); None follows the active
    strategy's symbols on the `prices.*` pattern.
    """

    def __init__(
        self,
        client: redis.Redis,
        symbols: Sequence[str] | None = None,
        name: str = "",
        names: pubsub.Names | None = None,
    ) -> None:
        self.client = client
        self.names = names or pubsub.names()
        self._control_channel = self.names.strategy_control.encode()
        self.name = name or f"listener-{os.getpid()}"
        self.own_symbols = tuple(symbols) if symbols else None
        self.stats = Stats()
        self.latency = metrics.LocalHistogram()  # decision time, exported through the heartbeat
        self.books: dict[str, dict[str, Quote]] = defaultdict(dict)
        self.streams: dict[Stream, sequence.Stream] = {}
        self.sequence_rules = sequence_rules()
        self.band = price_band()
        self.recent: dict[str, dict[str, deque[band.Seen]]] = defaultdict(dict)  # symbol, venue
        self.open: dict[GapKey, OpenGap] = {}
        self.config: StrategyConfig | None = None
        self.params: StrategyParams | None = None
        self.venues: dict[str, VenueState] = {}
        self.venue_ids: dict[str, int] = {}
        self.mode = settings.TRADING_MODE  # fixed on every opportunity this listener opens
        self.cooldown_ms = 0
        self._next_refresh = 0.0
        self.symbols: frozenset[str] = frozenset()
        self._events_channel = self.names.opportunity_events.encode()
        self.reserved: list[int] = []  # ids for the next accepted opportunities, smallest last
        # Each book decided on, when traced (LISTENER_TRACE_DECISIONS), until the next heartbeat.
        self.decided: list[str] | None = [] if settings.LISTENER_TRACE_DECISIONS else None

    # --- configuration -------------------------------------------------------------------------

    def load_strategy(self) -> None:
        """(Re)load the active strategy and the venues; keeps going without one, deciding nothing."""
        self.config = StrategyConfig.objects.filter(active=True).first()
        self.params = strategy_params(self.config) if self.config else None
        followed = self.params.symbols if self.params else ()
        self.symbols = frozenset(self.own_symbols if self.own_symbols is not None else followed)
        if self.config is None:
            log.warning("no active strategy config: listening, but deciding nothing")
        else:
            log.info("strategy v%s loaded: %s", self.config.version, self.params)
        self.refresh_venues()

    def refresh_venues(self) -> None:
        """Venue health, limits and free balances change while we run: re-read them, with the
        pair cooldown, and learn which opportunities settled (their crossings may re-arm)."""
        self.venue_ids = dict(Venue.objects.filter(enabled=True).values_list("name", "pk"))
        self.venues = load_venue_states(self.config, lambda v: tradeable(v, self.mode)) if self.config else {}
        self.cooldown_ms = risk_controls.limits().pair_cooldown_ms
        in_flight = {
            gap.opportunity_id: key for key, gap in self.open.items() if gap.state is GapState.IN_FLIGHT
        }
        for opportunity_id, when in lifecycle.settled(list(in_flight)).items():
            self.settled(opportunity_id, to_ms(when))

    def subscribe(self) -> redis.client.PubSub:
        channel: redis.client.PubSub = self.client.pubsub(ignore_subscribe_messages=True)
        channel.subscribe(self.names.strategy_control, self.names.opportunity_events)
        if self.own_symbols is None:
            channel.psubscribe(self.names.prices_pattern)
        else:
            channel.subscribe(*(self.names.prices(symbol) for symbol in self.own_symbols))
        return channel

    # --- the steps of one price event ----------------------------------------------------------

    def decode(self, raw: object) -> Quote | StaleMark | None:
        """The quote or stale mark in a message, or None when it was rejected (counted by reason)."""
        try:
            return pubsub.decode_price_event(raw)  # type: ignore[arg-type]  # anything: rejected by name
        except QuoteRejected as exc:
            self.reject(exc.reason, exc.detail)
            return None

    def reject(self, reason: str, detail: str, venue: str | None = None) -> None:
        self.stats.rejected[reason] += 1
        if venue is not None:
            self.stats.venue_rejected[(venue, reason)] += 1
        log.warning("price event rejected (%s): %s", reason, detail[:200])

    def on_channel(self, event: Quote | StaleMark, channel: bytes | str | None) -> bool:
        """Whether the quote (or stale mark) came on its symbol's channel (None: not from a
        subscription)."""
        if channel is None:
            return True
        expected = self.names.prices(event.symbol)
        if (channel.decode(errors="replace") if isinstance(channel, bytes) else channel) == expected:
            return True
        self.reject("wrong_channel", f"a {event.symbol} book on {channel!r}", event.venue)
        return False

    def followed(self, event: Quote | StaleMark) -> bool:
        """Whether the event's symbol is this listener's (else it is ignored) and its venue an
        enabled one (else it is rejected)."""
        if event.symbol not in self.symbols:
            self.stats.ignored += 1
            return False
        if event.venue not in self.venues:
            self.reject("unknown_venue", f"{event.venue!r} is not an enabled venue", event.venue)
            return False
        return True

    def accept(self, quote: Quote, now: int | None = None) -> bool:
        """Take the quote into the book unless its venue, symbol, sequence number or price says
        not to (see trading.core.sequence and trading.core.band)."""
        if not self.followed(quote) or not self.in_sequence(quote):
            return False
        kept = self.books[quote.symbol].get(quote.venue)
        if kept is not None and quote.timestamp < kept.timestamp:
            self.reject(
                "older_snapshot", f"{quote.venue} book of {quote.timestamp} after one of {kept.timestamp}"
            )
            return False
        if not self.in_band(quote, now_ms() if now is None else now):
            return False
        self.books[quote.symbol][quote.venue] = quote
        return True

    def in_sequence(self, quote: Quote) -> bool:
        stream = (quote.venue, quote.symbol)
        step = sequence.follow(self.streams.get(stream), quote.seq, self.sequence_rules)
        self.streams[stream] = step.stream
        self.stats.missed += step.missed
        if step.restarted:
            self.stats.restarts += 1
            log.warning("%s: a new numbering of the stream is followed from seq %d", stream, quote.seq)
        if not step.accepted:
            self.reject(step.reason, f"{stream} seq {quote.seq} after {step.stream.last}", quote.venue)
        return step.accepted

    def in_band(self, quote: Quote, now: int) -> bool:
        by_venue = self.recent[quote.symbol]
        reference = band.market(band.level(recent, self.band, now) for recent in by_venue.values())
        breach = band.judge(quote, reference, self.band)
        history = by_venue.setdefault(quote.venue, deque(maxlen=max(self.band.history, 1)))
        history.append(band.seen(quote))
        if breach is not None:
            self.reject(band.BAND_REASON, f"{(quote.venue, quote.symbol)}: {breach.describe()}", quote.venue)
        return breach is None

    @property
    def last_seq(self) -> dict[Stream, int]:
        """The last number taken on each stream."""
        return {stream: state.last for stream, state in self.streams.items()}

    def decide(self, quote: Quote, now: int) -> list[Decision]:
        """Decisions on every pair that includes the quote's venue: only those can have changed.
        Where books cross, they are decided on what other orders have not already taken."""
        if self.params is None:
            return []
        books, changed = self.books[quote.symbol], frozenset((quote.venue,))
        decisions = find_decisions(books, self.venues, self.params, now, involving=changed)
        if not decisions:
            return decisions
        left = self.untaken(books, decisions)
        if left is books:
            return decisions
        return find_decisions(left, self.venues, self.params, now, involving=changed)

    def untaken(self, books: dict[str, Quote], decisions: list[Decision]) -> Mapping[str, Quote]:
        """The books of the decisions' venues less what is taken from them (reserved or filled by
        trades in flight); a book taken whole is left out."""
        names = liquidity.involved(decisions)
        claims = book_claims.read(self.client, [books[name] for name in names])
        taken = {name: liquidity.total(c.values()) for name, c in zip(names, claims, strict=True)}
        return liquidity.books_less(books, taken)

    def withdraw(self, mark: StaleMark, now: int) -> bool:
        """Drop the venue's book (and its recent mids, which the band judges by) when a stale mark
        says it can no longer be trusted, and close the crossings it was part of: nothing is
        decided on it until its next book. False when the mark is not this listener's."""
        if not self.followed(mark):
            return False
        self.books[mark.symbol].pop(mark.venue, None)
        self.recent[mark.symbol].pop(mark.venue, None)
        self.stats.stale[(mark.venue, mark.kind)] += 1
        log.warning("%s %s book withdrawn: its stream broke (%s)", mark.venue, mark.symbol, mark.kind)
        self.track(mark.symbol, mark.venue, [], now)
        return True

    def record(self, quote: Quote, decisions: list[Decision], now: int) -> list[int]:
        """Open one Opportunity per new crossing, keep persisting ones, close those that are gone
        (with the same rules as the backtest: trading.core.gaps). Returns the new opportunities' ids.

        A crossing that persists is the same opportunity. A rejected one that becomes tradeable
        is closed and opens a new, accepted opportunity.
        """
        if not decisions and not self.open:
            return []  # the usual tick: nothing crosses and nothing was open
        return self.track(quote.symbol, quote.venue, decisions, now)

    def track(self, symbol: str, venue: str, decisions: list[Decision], now: int) -> list[int]:
        """`record`'s work once `venue`'s `symbol` book changed (or went) with these decisions."""
        states = {key: self.gap_state(gap, now) for key, gap in self.open.items()}
        changes = track_gaps(states, decisions, symbol, frozenset((venue,)))
        for key in changes.persisting:
            self.open[key].ticks += 1
            self.open[key].last_seen_ms = now
        for key in changes.closed:
            self.close_gap(key)
        self.stats.crossings += changes.crossings
        new_ids: list[int] = []
        for decision in changes.opened:
            self.open[decision.key] = self.open_opportunity(decision, now)
            new_ids.append(self.open[decision.key].opportunity_id)
        return new_ids

    def gap_state(self, gap: OpenGap, now: int) -> GapState:
        """A settled crossing re-arms once the pair's cooldown has passed since it settled."""
        if gap.settled_ms is not None and now - gap.settled_ms >= self.cooldown_ms:
            return GapState.REARMED
        return gap.state

    def settled(self, opportunity_id: int, when_ms: int) -> None:
        """The opportunity is done with: its crossing, if still open, may trade again."""
        for gap in self.open.values():
            if gap.opportunity_id == opportunity_id and gap.state is GapState.IN_FLIGHT:
                gap.settled_ms = when_ms

    def open_opportunity(self, decision: Decision, now: int) -> OpenGap:
        """Record the decision and, when accepted, queue its trade. With an id reserved ahead the
        task goes out first and the row follows, so that recording costs the trade no time: a
        worker that finds no row yet waits for it (trading.execution)."""
        pk = self.reserved.pop() if decision.accepted and self.reserved else None
        error = None if pk is None else self.send(pk)
        row = lifecycle.open_opportunity(
            decision,
            now,
            venue_ids=self.venue_ids,
            strategy=self.config,
            mode=self.mode,
            pk=pk,
            undispatched=None if error is None else str(error),
        )
        self.stats.opportunities += 1
        with correlation(opportunity_correlation(row.pk)):
            log.info(
                "opportunity %s opened as %s: %s buy on %s, sell on %s", row.pk, row.status, *decision.key
            )
            if decision.accepted and pk is None:
                transaction.on_commit(lambda: self.dispatch(row.pk))
            self.announce(row)
        state = GapState.IN_FLIGHT if decision.accepted else GapState.REJECTED
        return OpenGap(row.pk, state, first_seen_ms=now, last_seen_ms=now)

    def close_gap(self, key: GapKey) -> None:
        gap = self.open.pop(key)
        Opportunity.objects.filter(pk=gap.opportunity_id).update(
            last_seen_at=from_ms(gap.last_seen_ms), ticks=gap.ticks
        )

    def dispatch(self, opportunity_id: int) -> None:
        with correlation(opportunity_correlation(opportunity_id)):
            self._dispatch(opportunity_id)

    def _dispatch(self, opportunity_id: int) -> None:
        if lifecycle.dispatch(opportunity_id):
            self.stats.dispatched += 1

    def send(self, opportunity_id: int) -> Exception | None:
        """Queue the trade of an opportunity not recorded yet; the broker's error if it failed."""
        with correlation(opportunity_correlation(opportunity_id)):
            error = lifecycle.send(opportunity_id)
        if error is None:
            self.stats.dispatched += 1
        return error

    def reserve(self) -> None:
        """Keep ids in hand for the next opportunities (none without PostgreSQL)."""
        if len(self.reserved) < RESERVED_IDS // 2:
            self.reserved = sorted(self.reserved + lifecycle.reserve_ids(RESERVED_IDS), reverse=True)

    def warm_up(self) -> None:
        """Connect to the broker and declare the trade queue now, so that the first dispatch pays
        no connection cost, and reserve the first opportunity ids. A broker that is not there yet
        is left to the first dispatch."""
        started = time.perf_counter()
        self.reserve()
        try:
            with app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=3)
                route = app.amqp.router.route({}, lifecycle.EXECUTE_TASK, (), {}, None)
                producer.maybe_declare(route["queue"])
        except (OperationalError, redis.RedisError, OSError) as exc:
            log.warning("the broker is not reachable yet (%s): the first dispatch will connect", exc)
            return
        log.info("dispatch warmed up in %.3fs", time.perf_counter() - started)

    def announce(self, row: Opportunity) -> None:
        pubsub.publish_event(
            self.client,
            self.names.opportunity_events,
            {
                "opportunity": row.pk,
                "symbol": row.symbol,
                "status": row.status,
                "reason": row.reason,
                "expected_profit": None if row.expected_profit is None else str(row.expected_profit),
            },
        )

    def on_price(self, raw: object, now: int, channel: bytes | str | None = None) -> list[int]:
        """One price event, end to end, from any bytes at all. Returns the ids of opportunities it
        opened. `channel` is the one it came on, when it came from a subscription."""
        quote = self.decode(raw)
        if quote is None or not self.on_channel(quote, channel):
            return []
        if isinstance(quote, StaleMark):
            self.withdraw(quote, now)
            return []
        if not self.accept(quote, now):
            return []
        self.stats.ticks += 1
        started = time.perf_counter()
        try:
            return self.record(quote, self.decide(quote, now), now)
        except DjangoDatabaseError:
            self.stats.errors += 1
            log.exception("could not record decisions for %s", quote.symbol)
            close_old_connections()
            return []
        finally:
            self.latency.observe(time.perf_counter() - started)
            if self.decided is not None:
                self.decided.append(f"{quote.venue}\t{quote.symbol}\t{quote.seq}\t{time.time_ns()}")

    # --- the loop ------------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        if message.get("channel") == self._control_channel:
            log.info("strategy change announced: reloading")
            self.load_strategy()
            return
        if message["channel"] == self._events_channel:
            self.on_event(message["data"])
            return
        self.on_price(message.get("data"), now_ms(), message.get("channel"))

    def handle_safely(self, message: dict[str, Any]) -> None:
        """`handle`, except that a fault in the code for one message is counted and logged
        instead of stopping the listener. A lost Redis connection still goes to the loop."""
        try:
            self.handle(message)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except DjangoDatabaseError:
            self.stats.errors += 1
            log.exception("database error while handling a message")
            close_old_connections()
        except Exception:
            self.stats.errors += 1
            log.exception("a message could not be handled")

    def on_event(self, raw: bytes) -> None:
        """An opportunity event: a settled one re-arms its crossing."""
        try:
            event = json.loads(raw)
            if event.get("settled"):
                self.settled(int(event["opportunity"]), now_ms())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.reject("bad_event", f"opportunity event unusable: {exc}")

    def periodic(self) -> None:
        """Once a second: fresh balances and venue health, and a heartbeat with the counters."""
        if time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        try:
            self.refresh_venues()
            self.reserve()
        except DjangoDatabaseError:
            self.stats.errors += 1
            log.exception("could not refresh venues")
            close_old_connections()
        self.heartbeat()

    def heartbeat(self) -> None:
        beat = {
            "name": self.name,
            "pid": os.getpid(),
            "at_ms": now_ms(),
            **self.stats.as_dict(),
            "decision_seconds": self.latency.as_dict(),
        }
        heartbeats.write(self.client, f"listener:{self.name}", beat, HEARTBEAT_TTL_SECONDS, self.names)
        self.write_trace()

    def write_trace(self) -> None:
        """Append the books decided on since the last heartbeat to the decision trace, if traced."""
        if self.decided:
            self.client.rpush(self.names.decision_trace(self.name), *self.decided)
            self.decided.clear()

    def reconnect(self, should_stop: Callable[[], bool]) -> redis.client.PubSub | None:
        """After a lost connection: forget books that may be stale, then resubscribe with back-off.

        The streams' last numbers are kept, so the first book of each stream after the reconnect
        counts what was published while the listener was away as missed.
        """
        self.stats.reconnects += 1
        self.books.clear()
        delay = 0.1
        while not should_stop():
            try:
                return self.subscribe()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s): retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    def run(self, should_stop: Callable[[], bool], on_ready: Callable[[], None] = lambda: None) -> None:
        self.load_strategy()
        self.warm_up()
        channel: redis.client.PubSub | None = self.subscribe()
        on_ready()
        while channel is not None and not should_stop():
            try:
                message = channel.get_message(timeout=0.2)
                if message is not None:
                    self.handle_safely(message)
                self.periodic()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("lost redis (%s): reconnecting", exc)
                _close_quietly(channel)
                channel = self.reconnect(should_stop)
            except redis.RedisError:
                self.stats.errors += 1
                log.exception("redis refused a step; carrying on")
        if channel is not None:
            _close_quietly(channel)
        for key in list(self.open):
            self.close_gap(key)
        self.sign_off()

    def sign_off(self) -> None:
        """A clean stop removes the heartbeat at once: the listener is gone, not merely late."""
        try:
            self.write_trace()
            heartbeats.remove(self.client, f"listener:{self.name}", self.names)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("heartbeat left to expire: %s", exc)


def _close_quietly(channel: redis.client.PubSub) -> None:
    try:
        channel.close()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        log.info("closing a broken subscription: %s", exc)
