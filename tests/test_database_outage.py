"""A PostgreSQL outage, on a server the test starts and stops itself: the system keeps publishing,
keeps what it can for storage and counts what it cannot, and /metrics keeps answering.

Every process runs for real against the private server (worker, beat, listener, web); Redis is the
test Redis under this run's prefix. At the end every book that reached Pub/Sub is either a row in
the quote table or counted as unstored for its venue: nothing is lost uncounted.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from arbsite.celery import app
from tests.conftest import Child, child_env, start_worker
from tests.deadlines import wait_until
from tests.outage_servers import PrivatePostgres, free_port
from trading.pubsub import Names

pytestmark = pytest.mark.slow

BUFFER = 30  # books the storage queue may hold: the outage outlasts it


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.init()
    server.start()
    yield server
    server.remove()


class Books:
    """Counts every price book published under the prefix, by venue, from a thread."""

    def __init__(self, client: redis.Redis, names: Names) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._channel = client.pubsub()
        self._channel.psubscribe(names.prices_pattern)
        wait_until(self._confirmed, timeout=10, what="the subscription confirmed")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _confirmed(self) -> bool:
        """True once the subscription is confirmed: nothing published from then on is missed."""
        message = self._channel.get_message(timeout=0.5)
        return message is not None and message["type"] == "psubscribe"

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._channel.get_message(timeout=0.2)
            if message is not None and message["type"] == "pmessage":
                venue = json.loads(message["data"])["venue"]
                with self._lock:
                    self.counts[venue] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._channel.close()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def stored(url: str) -> Counter[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT v.name, count(*), count(DISTINCT q.seq) FROM trading_quote q "
            "JOIN trading_venue v ON v.id = q.venue_id GROUP BY v.name"
        ).fetchall()
    assert all(total == distinct for _, total, distinct in rows), "a book was stored twice"
    return Counter({name: total for name, total, _ in rows})


def run_command(spawn: Callable[..., Child], env: dict[str, str], *args: str) -> None:
    child = spawn(sys.executable, "manage.py", *args, name=args[0], env=env)
    assert child.proc.wait(timeout=300) == 0, child.output()[-3000:]


def test_a_database_outage_keeps_publishing_buffers_within_the_bound_and_counts_the_rest(
    private_postgres: PrivatePostgres,
    spawn: Callable[..., Child],
    redis_client: redis.Redis,
    names: Names,
    tmp_path: Path,
) -> None:
    env = child_env(
        DATABASE_URL=private_postgres.url, QUOTE_BUFFER_MAX=str(BUFFER), DEMO_ADMIN_PASSWORD="x" * 12
    )
    run_command(spawn, env, "migrate", "--verbosity", "0")
    run_command(spawn, env, "setup_demo")
    web_port = free_port()
    spawn(
        sys.executable, "manage.py", "runserver", f"127.0.0.1:{web_port}", "--noreload", name="web", env=env
    )
    listener = spawn(
        sys.executable, "manage.py", "listen_prices", "--name", "outage", name="listener", env=env
    )
    start_worker(spawn, env=env)
    listener.wait_for("listening", timeout=120)
    books = Books(redis_client, names)
    beat = spawn(
        sys.executable, "-m", "celery", "-A", "arbsite", "beat", "-S", "django",
        "--pidfile", str(tmp_path / "beat.pid"), name="beat", env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: sum(stored(private_postgres.url).values()) >= 8, timeout=120, what="books stored")
        wait_until(
            lambda: sample(scrape(web_port), "arb_metrics_source_up", source="database") == 1, timeout=60
        )

        private_postgres.stop()
        before = books.snapshot()
        # Collection goes on: the queue fills to its bound, and what it cannot take is counted.
        wait_until(
            lambda: sum(int(n) for n in redis_client.hvals(names.unstored_quotes)) >= 8,
            timeout=120,
            what="books counted as unstored",
        )
        during = scrape(web_port)
        published_during = books.snapshot() - before
        private_postgres.start()

        beat.stop()
        wait_until(lambda: redis_client.llen(f"{names.prefix}collect") == 0, what="collection drained")
        app.send_task("collect.store_quotes")
        wait_until(lambda: redis_client.llen(names.pending_quotes) == 0, timeout=60, what="the queue stored")
        unstored = Counter(
            {venue.decode(): int(n) for venue, n in redis_client.hgetall(names.unstored_quotes).items()}
        )
        wait_until(
            lambda: stored(private_postgres.url) + unstored == books.snapshot(),
            timeout=60,
            what="every published book stored or counted",
        )
        published = books.snapshot()
    finally:
        books.close()

    print(
        "database outage: published before",
        sum(before.values()),
        "during",
        sum(published_during.values()),
        "in all",
        sum(published.values()),
        "| stored",
        sum(stored(private_postgres.url).values()),
        "| unstored",
        dict(unstored),
        f"| queue bound {BUFFER}",
    )
    assert len(published_during) == 4, "every venue kept publishing while the database was away"
    assert sum(published_during.values()) >= BUFFER
    assert stored(private_postgres.url) + unstored == published
    assert redis_client.hlen(names.dead_quote_reasons) == 0
    # /metrics answered during the outage from what it could reach, and said what it could not.
    assert sample(during, "arb_metrics_source_up", source="database") == 0
    assert sample(during, "arb_metrics_source_up", source="redis") == 1
    assert sample(during, "arb_quotes_buffered") == BUFFER
    assert sum(v for (name, _), v in during.items() if name == "arb_quotes_unstored_total") >= 8
    assert (sample(during, "arb_listener_errors_total", listener="outage") or 0) > 0
    for counter in ("ticks", "listener_ignored", "listener_reconnects", "sequence_gap_messages"):
        assert sample(during, f"arb_{counter}_total", listener="outage") is not None
    assert listener.proc.poll() is None
