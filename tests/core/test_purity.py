"""The core is plain Python: the live path and the backtest can share it without dragging frameworks in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.deadlines import scaled

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("django", "celery", "redis", "ccxt", "kombu", "psycopg")

IMPORT_EVERY_CORE_MODULE = """
import importlib, json, pkgutil, sys
import trading.core
names = [m.name for m in pkgutil.walk_packages(trading.core.__path__, "trading.core.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_the_core_loads_no_framework() -> None:
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_CORE_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )
    report = json.loads(run.stdout)

    assert {"trading.core.fills", "trading.core.strategy", "trading.core.validate"} <= set(report["modules"])
    loaded = [name for name in report["loaded"] if name.split(".")[0] in FRAMEWORKS]
    assert loaded == []
