"""`manage.py bench stream`: order books streamed through ccxt.pro into Pub/Sub, against a bare
websocket client; venue frame sent to listener decision; and the dislocations a streaming and a
polling market catch.

The exchange emulator (in the bench's process) streams Binance and Kraken; a real `stream_prices`
and a real `listen_prices` (processes of their own, on real Redis under a prefix of the run) follow
them. Every book the bench sets differs from the one before only in the best bid's amount,
1 + index / 1,000,000, so that a book published or decided on says which update it is, and the
emulator's record of frames sent says when that update went out.

- Throughput: at each rate (spread evenly over the two venues, for `--seconds`), the books the
  streamer published (counted in the run's storage queue, written in the same round trip as each
  PUBLISH) a second, from the first to the last; then the same for a bare aiohttp client in a
  process of its own that subscribes to the same streams and only parses each frame's JSON.
- Latency: at `--rate`, from the wall time the emulator wrote a frame to the moment the listener
  had decided on that book (its decision trace, LISTENER_TRACE_DECISIONS).
- Dislocations: `--dislocations` times, at random moments, Binance's ask drops below Kraken's bid
  by 7.5 bps (5.5 bps after fees, over the strategy's 1 bps bar) for 300 ms, the books otherwise
  moving 100 times a second. Once with the venues streamed, once polled every second by the
  collector's own `collect_venue`; the share of dislocations the listener opened an opportunity
  on, each time. The venues hold no funds, so every opportunity is recorded as rejected and
  nothing trades: the decision is the same.
"""

from __future__ import annotations

import bisect
import multiprocessing
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings

from devtools.bench import BenchmarkUnavailable
from devtools.bench.bare_stream import follow
from devtools.bench.common import (
    activate_strategy,
    child_env,
    emulated_venue,
    log_path,
    manage,
    percentile,
    spawn,
    stop,
    wait_for,
)
from devtools.emulator import Emulator, emulate
from trading import collector, pubsub, streams
from trading.clock import from_ms
from trading.core.types import Quote
from trading.models import Opportunity, Venue

SYMBOL = "BTC/USDT"
DIALECTS = ("binance", "kraken")
FEE = Decimal("0.0001")
MARKER = Decimal("0.000001")
LEVELS = 5
# Best bid and ask: Kraken's, Binance's between dislocations, and Binance's during one.
PRICES = {"kraken": (Decimal(59995), Decimal(60005)), "binance": (Decimal(59996), Decimal(60004))}
DISLOCATED = (Decimal(59940), Decimal(59950))
MARKET_RATE = 100  # book changes a second of each venue in the simulated market
DISLOCATION_S = 0.3
SLOT_S = 3.0  # one dislocation at a random moment of each slot, at least a second after the last
POLL_S = 1.0
SETTLE_S = 2.0  # for the last books to be published and decided on, and the trace written

Levels = tuple[tuple[Decimal, Decimal], ...]
Book = tuple[Levels, Levels]


def book(bid: Decimal, ask: Decimal, index: int) -> Book:
    """A book at `bid`/`ask` whose best bid's amount carries `index`."""
    bids = tuple((bid - k, Decimal(1) + index * MARKER if k == 0 else Decimal(k + 1)) for k in range(LEVELS))
    asks = tuple((ask + k, Decimal(k + 1)) for k in range(LEVELS))
    return bids, asks


def marker(quote: Quote) -> int:
    """The index a book carries (see `book`)."""
    return int(((quote.bids[0][1] - 1) / MARKER).to_integral_value())


@dataclass(frozen=True)
class Played:
    """Updates set on the emulator: the first index of the run, and each venue's book version
    before it (the update of index i is served as version `base + 1 + i - first`)."""

    first: int
    count: int
    base: dict[str, int]
    started_ns: int


class StreamBench:
    """The run's emulator, venues, Redis and spawned processes."""

    def __init__(self, emulator: Emulator, tag: str, out: Callable[[str], None]) -> None:
        self.emulator = emulator
        self.tag = tag
        self.out = out
        self.names = pubsub.names()
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.venues = {
            dialect: emulated_venue(
                emulator,
                dialect,
                f"bench-{dialect}-{tag}",
                FEE,
                feed=Venue.Feed.STREAM,
                stream_url=emulator.stream_url_for(dialect),
            )
            for dialect in DIALECTS
        }
        self.dialect_of = {venue.name: dialect for dialect, venue in self.venues.items()}
        self.env = child_env(
            self.names.prefix, LISTENER_TRACE_DECISIONS="1", QUOTE_BUFFER_MAX="10000000", TRADING_MODE="paper"
        )
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.index = 0

    # --- processes ------------------------------------------------------------------------------

    def start(self, command: str, ready: str) -> None:
        log = log_path(self.env, f"bench-stream-{command}")
        self.running[command] = spawn(manage(command, "--name", f"bench-{self.tag}"), self.env, log)
        wait_for(log, ready, self.running[command])
        self.out(f"{command} ready (log: {log})")

    def stop(self, *commands: str) -> None:
        stop(self.running.pop(command) for command in commands if command in self.running)

    def start_streamer(self) -> None:
        """The streamer, once both venues' streams are live (a few updates sent for that)."""
        self.start("stream_prices", "streaming ")
        names = [venue.name for venue in self.venues.values()]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.play(self.updates(10), per_second=100)
            beats = streams.beats(self.client, names).values()
            if all(beat is not None and beat.get("state") == "live" for beat in beats):
                return
        raise RuntimeError("the venues' streams did not go live within 60 s: see the streamer's log")

    def set_feed(self, feed: str) -> None:
        Venue.objects.filter(pk__in=[v.pk for v in self.venues.values()]).update(feed=feed)

    def close(self) -> None:
        """Stop what runs, disable the run's venues and remove its keys from Redis."""
        self.stop(*list(self.running))
        Venue.objects.filter(pk__in=[v.pk for v in self.venues.values()]).update(enabled=False)
        keys = list(self.client.scan_iter(match=f"{self.names.prefix}*", count=1000))
        if keys:
            self.client.delete(*keys)

    # --- the market -----------------------------------------------------------------------------

    def updates(self, count: int) -> dict[str, list[Book]]:
        """`count` further updates of each venue's book at its usual prices."""
        first, self.index = self.index, self.index + count
        return {d: [book(*PRICES[d], i) for i in range(first, first + count)] for d in DIALECTS}

    def play(self, books: dict[str, list[Book]], per_second: float) -> Played:
        """Set each venue's books in turn at `per_second` each, both venues at once."""
        count = len(books[DIALECTS[0]])
        base = {d: self.emulator.book(d, SYMBOL).version for d in DIALECTS}
        played = Played(self.index - count, count, base, time.time_ns())
        threads = [
            threading.Thread(
                target=self.emulator.stream_updates,
                args=(dialect, SYMBOL, books[dialect]),
                kwargs={"per_second": per_second},
            )
            for dialect in DIALECTS
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return played

    def queued(self) -> list[Quote]:
        """The books published since the storage queue was last emptied, which empties it."""
        raw = self.client.lrange(self.names.pending_quotes, 0, -1)
        self.client.delete(self.names.pending_quotes)
        return [pubsub.decode_quote(message) for message in raw]

    # --- throughput -----------------------------------------------------------------------------

    def streamer_rate(self, rate: int, seconds: float) -> tuple[float, int]:
        """Books the streamer published a second at `rate` updates a second over both venues, and
        how many."""
        self.queued()
        played = self.play(self.updates(max(int(rate * seconds / 2), 2)), per_second=rate / 2)
        time.sleep(SETTLE_S)
        quotes = [q for q in self.queued() if q.venue in self.dialect_of and marker(q) >= played.first]
        stamps = [quote.received_ts for quote in quotes]
        return per_second(len(quotes), (max(stamps) - min(stamps)) / 1e3), len(quotes)

    def bare_rate(self, rate: int, seconds: float) -> tuple[float, int]:
        """Book frames a bare client parsed a second at `rate` updates a second, and how many."""
        context = multiprocessing.get_context("spawn")
        ready, done, results = context.Event(), context.Event(), context.Queue()
        roots = {dialect: self.emulator.stream_url_for(dialect) for dialect in DIALECTS}
        client = context.Process(target=follow, args=(roots, ready, done, results))
        client.start()
        try:
            if not ready.wait(timeout=60):
                raise RuntimeError("the bare client did not subscribe within 60 s")
            time.sleep(0.5)  # its subscriptions reach the emulator
            self.play(self.updates(max(int(rate * seconds / 2), 2)), per_second=rate / 2)
            time.sleep(SETTLE_S)
            done.set()
            counted = results.get(timeout=30)
        finally:
            client.join(timeout=30)
        count = sum(parsed for parsed, _, _ in counted.values())
        first = min(first for _, first, _ in counted.values())
        last = max(last for _, _, last in counted.values())
        return per_second(count, (last - first) / 1e9), count

    # --- latency --------------------------------------------------------------------------------

    def latencies(self, rate: int, seconds: float) -> list[float]:
        """ms from each frame's writing to the listener's decision on its book, at `rate`."""
        trace = self.names.decision_trace(f"bench-{self.tag}")
        self.client.delete(trace)
        self.queued()
        played = self.play(self.updates(max(int(rate * seconds / 2), 2)), per_second=rate / 2)
        time.sleep(SETTLE_S)
        index = {(q.venue, q.seq): marker(q) for q in self.queued()}
        sent = {
            (dialect, frame.version): frame.wall_ns
            for dialect in DIALECTS
            for frame in self.emulator.sent_frames(dialect)
        }
        latencies = []
        for line in self.client.lrange(trace, 0, -1):
            venue, _, seq, decided = pubsub.as_text(line).split("\t")
            wall = self.sent_at(played, sent, venue, index.get((venue, int(seq))))
            if wall is not None:
                latencies.append((int(decided) - wall) / 1e6)
        return latencies

    def sent_at(
        self, played: Played, sent: dict[tuple[str, int], int], venue: str, index: int | None
    ) -> int | None:
        """When the frame of update `index` of `venue` was written (None: not an update of the run)."""
        dialect = self.dialect_of.get(venue)
        if dialect is None or index is None or not 0 <= index - played.first < played.count:
            return None
        return sent.get((dialect, played.base[dialect] + 1 + index - played.first))

    # --- dislocations ---------------------------------------------------------------------------

    def market(self, starts: Sequence[float]) -> tuple[dict[str, list[Book]], dict[int, int]]:
        """Both venues' books at MARKET_RATE a second, Binance's ask below Kraken's bid for
        DISLOCATION_S from each of `starts` (seconds from the beginning); and which dislocation
        each of Binance's dislocated books (by index) belongs to."""
        first = self.index
        books = self.updates(int((len(starts) * SLOT_S + 1) * MARKET_RATE))
        dislocated: dict[int, int] = {}
        for number, start in enumerate(starts):
            step = int(start * MARKET_RATE)
            for index in range(first + step, first + step + int(DISLOCATION_S * MARKET_RATE)):
                books["binance"][index - first] = book(*DISLOCATED, index)
                dislocated[index] = number
        return books, dislocated

    def caught(self, starts: Sequence[float], polled: bool) -> int:
        """Of the dislocations at `starts`, how many the listener opened an opportunity on: the
        Binance book it decided on as it opened one (by the decision trace) is one of theirs."""
        books, dislocated = self.market(starts)
        trace = self.names.decision_trace(f"bench-{self.tag}")
        self.client.delete(trace)
        self.queued()
        stopping = threading.Event()
        pollers = [threading.Thread(target=self.poll, args=(v, stopping)) for v in self.venues.values()]
        for poller in pollers if polled else ():
            poller.start()
        try:
            played = self.play(books, per_second=MARKET_RATE)
        finally:
            stopping.set()
        for poller in pollers if polled else ():
            poller.join()
        time.sleep(SETTLE_S)
        return len({dislocated[i] for i in self.opened_on(played, trace) if i in dislocated})

    def opened_on(self, played: Played, trace: str) -> list[int]:
        """The index of the Binance book each opportunity of the run was opened on: the first
        Binance book the listener was done deciding on from the opportunity's detection on."""
        binance = self.venues["binance"].name
        index = {q.seq: marker(q) for q in self.queued() if q.venue == binance}
        decided = []
        for line in self.client.lrange(trace, 0, -1):
            venue, _, seq, at = pubsub.as_text(line).split("\t")
            if venue == binance and int(seq) in index:
                decided.append((int(at), index[int(seq)]))
        decided.sort()
        moments = [at for at, _ in decided]
        began = from_ms(played.started_ns // 1_000_000)
        detected = Opportunity.objects.filter(buy_venue=self.venues["binance"], detected_at__gte=began)
        found = []
        for moment in detected.values_list("detected_at", flat=True):
            position = bisect.bisect_left(moments, int(moment.timestamp() * 1000) * 1_000_000)
            if position < len(decided):
                found.append(decided[position][1])
        return found

    def poll(self, venue: Venue, stopping: threading.Event) -> None:
        """The collector's round for `venue` every POLL_S until `stopping` (a round that takes
        longer delays only the next one), on a database connection of the thread's own."""
        started = time.monotonic()
        rounds = 0
        try:
            while not stopping.wait(max(0.0, started + (rounds + 1) * POLL_S - time.monotonic())):
                rounds += 1
                collector.collect_venue(venue.pk)
        finally:
            connection.close()  # this thread's own


def per_second(count: int, seconds: float) -> float:
    """A rate from `count` events over the `seconds` from the first to the last."""
    return round((count - 1) / seconds) if count > 1 and seconds > 0 else 0.0


def dislocation_starts(count: int, seed: int = 1) -> list[float]:
    """One random moment in each of `count` slots of SLOT_S seconds, each at least a second after
    the dislocation before it closed."""
    rng = random.Random(seed)
    latest = SLOT_S - DISLOCATION_S - 1.0
    return [slot * SLOT_S + rng.uniform(0, latest) for slot in range(count)]


def run(out: Callable[[str], None], **options: Any) -> dict[str, float]:
    if connection.vendor != "postgresql":
        raise BenchmarkUnavailable("needs PostgreSQL (DATABASE_URL): the listener reserves opportunity ids")
    tag = uuid.uuid4().hex[:6]
    with override_settings(ARB_PREFIX=f"bench-stream-{tag}:"), emulate(*DIALECTS) as emulator:
        activate_strategy(
            symbols=[SYMBOL], min_profit_bps=Decimal(1), trade_size=Decimal("0.01"), note="bench stream"
        )
        bench = StreamBench(emulator, tag, out)
        try:
            return figures(bench, out, options)
        finally:
            bench.close()


def figures(bench: StreamBench, out: Callable[[str], None], options: dict[str, Any]) -> dict[str, float]:
    rates: list[int] = options.get("rates") or [1_000, 10_000]
    rate, seconds = options.get("rate") or 1_000, options.get("seconds") or 5
    starts = dislocation_starts(options.get("dislocations") or 30)
    found: dict[str, float] = {}
    bench.start("listen_prices", "listening on")
    bench.start_streamer()
    out(f"latency: {rate} updates/s for {seconds} s ...")
    latencies = bench.latencies(rate, seconds)
    if not latencies:
        raise RuntimeError("no book decided on could be traced to its frame: see the logs")
    found |= {"p50_ms": round(percentile(latencies, 0.5), 2), "p99_ms": round(percentile(latencies, 0.99), 2)}
    found["latency_books"] = len(latencies)
    out(f"{len(starts)} dislocations of {DISLOCATION_S * 1000:.0f} ms, streamed ...")
    streamed = bench.caught(starts, polled=False)
    bench.stop("stream_prices")
    bench.set_feed(Venue.Feed.POLL)
    out(f"the same {len(starts)} dislocations, polled every {POLL_S:.0f} s ...")
    polled = bench.caught(starts, polled=True)
    found |= {"dislocations": len(starts), "caught_streamed": streamed, "caught_polled": polled}
    found |= {
        "share_streamed": round(streamed / len(starts), 3),
        "share_polled": round(polled / len(starts), 3),
    }
    bench.stop("listen_prices")
    bench.set_feed(Venue.Feed.STREAM)
    return found | throughput(bench, out, rates, seconds)


def throughput(
    bench: StreamBench, out: Callable[[str], None], rates: Sequence[int], seconds: float
) -> dict[str, float]:
    """Books a second through the streamer into Pub/Sub and frames a second through a bare
    client, at each rate."""
    found: dict[str, float] = {}
    bench.start_streamer()
    for rate in rates:
        out(f"streamer: {rate} updates/s for {seconds} s ...")
        found[f"streamer_{rate}_per_s"], found[f"streamer_{rate}_books"] = bench.streamer_rate(rate, seconds)
    bench.stop("stream_prices")
    for rate in rates:
        out(f"bare websocket client: {rate} updates/s for {seconds} s ...")
        found[f"bare_{rate}_per_s"], found[f"bare_{rate}_frames"] = bench.bare_rate(rate, seconds)
        bare = found[f"bare_{rate}_per_s"]
        found[f"ratio_{rate}"] = round(found[f"streamer_{rate}_per_s"] / bare, 3) if bare else 0.0
    return found
