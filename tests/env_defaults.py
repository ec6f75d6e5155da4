"""Loaded by pytest before Django starts: the test run's environment, unless the caller set it.

Tests use real PostgreSQL and real Redis. Each run gets its own channel/key prefix, because Redis
Pub/Sub channels are shared by every client of the server. Child processes inherit all of this.
"""

import atexit
import os
import shutil
import tempfile
import uuid

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arb")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("ARB_PREFIX", f"test-{uuid.uuid4().hex[:8]}:")
# Every process of the run (this one, workers, listeners) keeps its metrics in one fresh directory,
# which /metrics adds up (trading/observability/metrics.py); removed when the run ends.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="arb-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
