"""Quote storage against real PostgreSQL and real Redis: COPY, draining the queue, pruning, bench."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from pytest_django import Settings
from redis.exceptions import LockNotOwnedError

from tests.conftest import ROOT, Child, child_env, make_venue
from tests.deadlines import scaled, wait_until
from tests.quotes import book
from trading import pubsub, storage
from trading.core.types import Quote
from trading.models import Quote as QuoteRow
from trading.models import Venue
from trading.pubsub import Names
from trading.tasks import store_quotes

pytestmark = pytest.mark.django_db

D = Decimal
NOW_MS = 1_700_000_000_123


def quote(venue: str = "alpha", seq: int = 1, **fields: object) -> Quote:
    values: dict[str, object] = {
        "bids": [("65000.5", "0.25"), ("64999", "1")],
        "asks": [("65001", "0.5"), ("65002.25", "2")],
        "received_ts": NOW_MS,
        "seq": seq,
    }
    values.update(fields)
    return book(venue, **values)  # type: ignore[arg-type]


def stored_seqs() -> list[tuple[str, int]]:
    return sorted(QuoteRow.objects.values_list("venue__name", "seq"))


def as_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def test_copy_keeps_every_column_exactly() -> None:
    venue = make_venue("alpha")
    extreme = Quote(
        venue="alpha",
        symbol="BTC/USDT",
        bids=((D("65000.123456789012"), D("0.000000000001")), (D("64999.5"), D("1234567890123456"))),
        asks=((D("9999999999999999.999999999999"), D("3")), (D("1E+16"), D("0.1"))),
        received_ts=NOW_MS,
        seq=2**62,
        venue_ts=NOW_MS - 7,
    )
    unstamped = quote(seq=5)

    assert storage.QuoteWriter().write([extreme, unstamped]) == 2

    row = QuoteRow.objects.get(seq=2**62)
    assert (row.venue_id, row.symbol) == (venue.pk, "BTC/USDT")
    assert (row.bid, row.bid_size) == (D("65000.123456789012"), D("0.000000000001"))
    assert (row.ask, row.ask_size) == (D("9999999999999999.999999999999"), D("3"))
    assert row.depth == {
        "bids": [["65000.123456789012", "1E-12"], ["64999.5", "1234567890123456"]],
        "asks": [["9999999999999999.999999999999", "3"], ["1E+16", "0.1"]],
    }
    assert row.venue_ts == as_datetime(NOW_MS - 7)
    assert row.received_at == as_datetime(NOW_MS)
    assert row.received_at.microsecond == 123_000
    assert QuoteRow.objects.get(seq=5).venue_ts is None


def test_a_write_in_a_transaction_that_fails_is_not_kept() -> None:
    make_venue("alpha")
    with transaction.atomic():
        storage.QuoteWriter().write([quote()])
        assert QuoteRow.objects.count() == 1
        transaction.set_rollback(True)  # the caller's work failed

    assert not QuoteRow.objects.exists()


def test_writer_refuses_an_unknown_venue_and_finds_a_new_one() -> None:
    make_venue("alpha")
    writer = storage.QuoteWriter()
    writer.write([quote("alpha")])

    with pytest.raises(storage.UnknownVenue, match="beta"):
        writer.write([quote("alpha", seq=2), quote("beta")])
    make_venue("beta")
    writer.write([quote("beta")])

    assert stored_seqs() == [("alpha", 1), ("beta", 1)]


def test_store_pending_drains_what_collectors_queued(redis_client: redis.Redis, names: Names) -> None:
    make_venue("alpha")
    make_venue("beta")
    quotes = [quote("alpha", seq=i) for i in range(1, 5)] + [quote("beta", seq=i) for i in range(1, 4)]
    pubsub.publish_quotes(redis_client, quotes)
    assert redis_client.llen(names.pending_quotes) == 7

    assert storage.store_pending(batch=3) == 7

    assert redis_client.llen(names.pending_quotes) == 0
    assert stored_seqs() == sorted((q.venue, q.seq) for q in quotes)
    assert storage.store_pending() == 0


def test_unstorable_entries_are_dead_lettered_and_counted(
    redis_client: redis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    make_venue("alpha")
    bad_json = b'{"venue": "alpha", '
    unknown = pubsub.encode_quote(quote("nowhere"))
    too_big = pubsub.encode_quote(quote(bids=[("1E+17", "1")], asks=[("2E+17", "1")]))
    pending = [
        pubsub.encode_quote(quote(seq=1)),
        bad_json,
        unknown,
        too_big,
        pubsub.encode_quote(quote(seq=2)),
    ]
    redis_client.rpush(names.pending_quotes, *pending)

    assert storage.store_pending() == 2

    assert stored_seqs() == [("alpha", 1), ("alpha", 2)]
    assert redis_client.llen(names.pending_quotes) == 0
    assert sorted(redis_client.lrange(names.dead_quotes, 0, -1)) == sorted([bad_json, unknown, too_big])
    assert redis_client.hgetall(names.dead_quote_reasons) == {
        b"bad_json": b"1",
        b"unknown_venue": b"1",
        b"malformed": b"1",  # past the quote table's sixteen integer digits
    }
    assert "unknown_venue (first: nowhere)" in caplog.text


def test_a_batch_the_database_refuses_stays_queued(redis_client: redis.Redis, names: Names) -> None:
    make_venue("alpha")
    pubsub.publish_quotes(redis_client, [quote(seq=1), quote(seq=2)])
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_quote() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no space left'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_quote BEFORE INSERT ON trading_quote "
            "FOR EACH ROW EXECUTE FUNCTION refuse_quote()"
        )

    with pytest.raises(DatabaseError, match="no space left"):
        storage.store_pending()
    assert redis_client.llen(names.pending_quotes) == 2

    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER refuse_quote ON trading_quote")
    assert storage.store_pending() == 2
    assert stored_seqs() == [("alpha", 1), ("alpha", 2)]


def test_only_one_flusher_drains_at_a_time(redis_client: redis.Redis, names: Names) -> None:
    make_venue("alpha")
    pubsub.publish_quotes(redis_client, [quote(seq=1)])
    other = redis_client.lock(names.store_lock, timeout=30)
    assert other.acquire(blocking=False)

    assert storage.store_pending() == 0
    assert redis_client.llen(names.pending_quotes) == 1

    other.release()
    assert storage.store_pending() == 1


def test_a_flusher_whose_lock_expired_trims_nothing(redis_client: redis.Redis, names: Names) -> None:
    redis_client.rpush(names.pending_quotes, b"first", b"second")
    mine = redis_client.lock(names.store_lock, timeout=30)
    assert mine.acquire(blocking=False)
    redis_client.set(names.store_lock, b"next-flusher")  # ours expired and another flusher took it

    with pytest.raises(LockNotOwnedError):
        storage.settle_batch(redis_client, mine, 2, [storage.DeadEntry(b"second", "bad_json", "")])

    assert redis_client.lrange(names.pending_quotes, 0, -1) == [b"first", b"second"]
    assert redis_client.llen(names.dead_quotes) == 0


def quotes_received(days_ago: float, count: int, first_seq: int) -> list[Quote]:
    received = int((datetime.now(UTC) - timedelta(days=days_ago)).timestamp() * 1000)
    return [quote(seq=first_seq + i, received_ts=received) for i in range(count)]


def test_prune_quotes_removes_only_old_rows() -> None:
    make_venue("alpha")
    storage.QuoteWriter().write(quotes_received(10, 5, 1) + quotes_received(6.9, 2, 100))
    out = StringIO()

    call_command("prune_quotes", older_than_days=7, batch_size=2, stdout=out)

    assert stored_seqs() == [("alpha", 100), ("alpha", 101)]
    assert out.getvalue().startswith("pruned 5 quotes")


def test_prune_quotes_keeps_the_configured_days_by_default(settings: Settings) -> None:
    settings.QUOTE_RETENTION_DAYS = 2
    make_venue("alpha")
    storage.QuoteWriter().write(quotes_received(3, 1, 1) + quotes_received(1, 1, 2))

    call_command("prune_quotes", stdout=StringIO())

    assert stored_seqs() == [("alpha", 2)]


def test_quote_table_has_a_brin_index_on_received_at() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'trading_quote'")
        definitions = [definition for (definition,) in cursor.fetchall()]
    assert any("USING brin (received_at)" in definition for definition in definitions)


def test_bench_storage_prints_its_figures_as_json_last_and_leaves_nothing() -> None:
    out = StringIO()

    call_command("bench", "storage", rows=2000, stdout=out)

    lines = out.getvalue().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == {"rows_per_s", "baseline_rows_per_s", "ratio", "rows"}
    assert figures["rows"] == 2000
    assert all(figures[name] > 0 for name in ("rows_per_s", "baseline_rows_per_s", "ratio"))
    assert any(line.split() == ["rows", "2,000"] for line in lines[:-1])
    assert not QuoteRow.objects.exists()
    assert not Venue.objects.filter(name__startswith="bench-").exists()


@pytest.mark.slow
def test_quick_start_sqlite_stores_quotes_and_bench_refuses(tmp_path: Path) -> None:
    env = child_env(DATABASE_URL=f"sqlite:///{tmp_path / 'quick.sqlite3'}")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=scaled(120))
    script = (
        "from decimal import Decimal; from tests.quotes import book; "
        "from trading.storage import QuoteWriter; from trading.models import Quote, Venue; "
        "Venue.objects.create(name='alpha'); "
        "QuoteWriter().write([book('alpha', [('65000.5', '1')], [('65001', '2'), ('65002.25', '3')], seq=n)"
        " for n in (1, 2)]); "
        "print(sorted((q.seq, q.bid == Decimal('65000.5'), q.depth['asks'][1]) for q in Quote.objects.all()))"
    )
    shell = subprocess.run(
        [*manage, "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    printed = shell.stdout.splitlines()[-1:]
    assert printed == ["[(1, True, ['65002.25', '3']), (2, True, ['65002.25', '3'])]"], shell.stderr

    bench = subprocess.run(
        [*manage, "bench", "storage", "--rows", "10"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bench.returncode != 0
    assert "needs PostgreSQL" in bench.stderr


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_store_task_on_a_real_worker_drains_the_queue(
    celery_worker: Child, redis_client: redis.Redis, names: Names
) -> None:
    make_venue("alpha")
    pubsub.publish_quotes(redis_client, [quote(seq=i) for i in range(1, 4)])

    store_quotes.delay()

    wait_until(lambda: QuoteRow.objects.count() >= 3, what="three stored quotes")
    assert stored_seqs() == [("alpha", 1), ("alpha", 2), ("alpha", 3)]
    assert redis_client.llen(names.pending_quotes) == 0
