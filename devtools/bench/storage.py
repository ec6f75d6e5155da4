"""Storage benchmark: the quote writer against a bare psycopg binary COPY of the same rows.

Both write into the real quote table inside one transaction that is rolled back at the end, so a
run leaves nothing behind (the bench venues included). Each round runs in a savepoint that is
rolled back too, so every round starts from the same table. The writer is timed from core Quotes
(venue ids, row building, COPY); the baseline is timed from rows already built, so the ratio is
what the writer's own work costs on top of COPY. Commit is in neither.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from devtools.bench import BenchmarkUnavailable
from trading.core.types import Level, Quote
from trading.models import Venue
from trading.storage import COPY_SQL, COPY_TYPES, JsonbTextDumper, QuoteWriter, Row

VENUES = tuple(f"bench-{i}" for i in range(1, 6))
SYMBOL = "BTC/USDT"
LEVELS = 5
DEFAULT_ROWS = 200_000
ROUNDS = 5
START_MS = 1_700_000_000_000

Out = Callable[[str], None]


def run(out: Out, **options: Any) -> dict[str, float]:
    """Write `rows` quotes (default 200,000) both ways; returns rows_per_s, baseline_rows_per_s,
    ratio and rows. Raises BenchmarkUnavailable unless the database is PostgreSQL."""
    if connection.vendor != "postgresql":
        raise BenchmarkUnavailable(f"needs PostgreSQL for COPY; this database is {connection.vendor}")
    rows = int(options.get("rows") or DEFAULT_ROWS)
    out(f"generating {rows:,} quotes over {len(VENUES)} venues, {LEVELS} levels a side")
    quotes = make_quotes(rows)
    with transaction.atomic():
        ensure_venues()
        figures = measure(out, quotes)
        transaction.set_rollback(True)
    return figures


def make_quotes(count: int, seed: int = 1) -> list[Quote]:
    """`count` valid quotes, round-robin over the bench venues, each stream numbered from 1."""
    rng = random.Random(seed)
    return [bench_quote(rng, i) for i in range(count)]


def bench_quote(rng: random.Random, i: int) -> Quote:
    mid_cents = 6_000_000 + rng.randrange(-50_000, 50_000)
    return Quote(
        venue=VENUES[i % len(VENUES)],
        symbol=SYMBOL,
        bids=side_levels(rng, mid_cents - 1, -1),
        asks=side_levels(rng, mid_cents + 1, 1),
        received_ts=START_MS + i,
        seq=i // len(VENUES) + 1,
        venue_ts=START_MS + i - rng.randrange(1, 50),
    )


def side_levels(rng: random.Random, best_cents: int, step: int) -> tuple[Level, ...]:
    """LEVELS levels from `best_cents` outwards; prices to the cent, amounts to 1e-5."""
    return tuple(
        (Decimal(best_cents + step * level).scaleb(-2), Decimal(rng.randrange(1, 500_000)).scaleb(-5))
        for level in range(LEVELS)
    )


def ensure_venues() -> None:
    for name in VENUES:
        Venue.objects.get_or_create(name=name, defaults={"kind": Venue.Kind.SIMULATED})


def bare_copy(rows: Sequence[Row]) -> None:
    """The baseline: psycopg's binary COPY of ready-made rows, the same column types, nothing else."""
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        cursor.adapters.register_dumper(None, JsonbTextDumper)
        with cursor.copy(COPY_SQL) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)


def timed(write: Callable[[], object]) -> float:
    """Seconds `write` took, in a savepoint rolled back afterwards; no garbage collection meanwhile."""
    gc.collect()
    gc.disable()
    try:
        with transaction.atomic():
            start = time.perf_counter()
            write()
            elapsed = time.perf_counter() - start
            transaction.set_rollback(True)
    finally:
        gc.enable()
    return elapsed


def measure(out: Out, quotes: list[Quote]) -> dict[str, float]:
    """Alternate writer and baseline rounds; the best round of each counts (as timeit does)."""
    writer = QuoteWriter()
    rows = list(writer.rows(quotes))
    writer_best = baseline_best = float("inf")
    for round_no in range(1, ROUNDS + 1):
        baseline_s = timed(lambda: bare_copy(rows))
        writer_s = timed(lambda: writer.write(quotes))
        out(
            f"round {round_no}: writer {len(quotes) / writer_s:,.0f} rows/s, bare COPY "
            f"{len(rows) / baseline_s:,.0f} rows/s"
        )
        writer_best, baseline_best = min(writer_best, writer_s), min(baseline_best, baseline_s)
    rows_per_s, baseline_rows_per_s = len(quotes) / writer_best, len(rows) / baseline_best
    return {
        "rows_per_s": round(rows_per_s, 1),
        "baseline_rows_per_s": round(baseline_rows_per_s, 1),
        "ratio": round(rows_per_s / baseline_rows_per_s, 3),
        "rows": len(quotes),
    }
