"""Benchmarks run by `manage.py bench <which>`.

Each module here has `run(out, **options) -> dict[str, float]`: it reports progress through `out`
(one line per call), takes the command's parsed options (ignoring those it does not use) and returns
its figures. Timings are measured here, never asserted in tests.
"""

from __future__ import annotations


class BenchmarkUnavailable(RuntimeError):
    """This benchmark cannot run in this environment (the message says why)."""
