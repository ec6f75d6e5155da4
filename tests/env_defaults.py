"""Loaded by pytest before Django starts: the test run's environment, unless the caller set it.

Tests use real PostgreSQL and real Redis, which other test runs may be using at the same time.
Each run therefore gets its own database name (pytest-django creates `test_<name>` and drops it at
the end of the run) and its own channel/key prefix, because Redis Pub/Sub channels are shared by
every client of the server. Child processes inherit all of this.
"""

import atexit
import os
import shutil
import tempfile
import uuid

RUN_ID = uuid.uuid4().hex[:8]

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/arb_{RUN_ID}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("ARB_PREFIX", f"test-{RUN_ID}:")
# Every process of the run (this one, workers, listeners) keeps its metrics in one fresh directory,
# which /metrics adds up (trading/observability/metrics.py); removed when the run ends.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="arb-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
