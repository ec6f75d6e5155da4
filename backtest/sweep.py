"""Parameter sweeps: every combination of a grid replayed in parallel, ranked by one metric, and
walk-forward windows (choose on a training window, score on the window after it) so that a
choice that only fits the past shows up as a poor test score.

Each combination's results on the training windows (in sample) and on the test windows (out of
sample) stand side by side. The winner is chosen by its out-of-sample results alone, and it is
promoted only when it traded out of sample and made money there: a combination that wins only
in sample is never promoted.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections
from django.utils import timezone

from backtest.engine.source import PARAM_TYPES
from backtest.metrics import score, summarize
from backtest.models import BacktestRun
from backtest.runs import RunSpec, code_version, replay
from trading import strategies

log = logging.getLogger(__name__)
Combo = dict[str, str]
# The figures kept for each replay of a sweep.
KEPT = ("trades", "net_pnl", "gross_pnl", "fees", "win_rate", "max_drawdown", "sharpe_hourly")
# Figures that add up across windows; the others are averaged, but the drawdown is the worst.
ADDITIVE = ("trades", "net_pnl", "gross_pnl", "fees")


@dataclass(frozen=True)
class Window:
    """Choose on [train_from, test_from), score on [test_from, test_to)."""

    train_from: datetime
    test_from: datetime
    test_to: datetime


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """["min_profit_bps=5,10", "trade_size=0.01"] -> {"min_profit_bps": ["5", "10"], ...}.
    Raises ValueError for an item without "=" or without values."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not sep or not name or not choices:
            raise ValueError(f"a grid axis looks like name=v1,v2: got {item!r}")
        if name not in PARAM_TYPES:
            raise ValueError(f"unknown strategy parameter {name!r}; known: {', '.join(PARAM_TYPES)}")
        grid[name] = choices
    return grid


def combinations(grid: Mapping[str, Sequence[str]]) -> list[Combo]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def rolling_windows(start: datetime, end: datetime, train: timedelta, test: timedelta) -> list[Window]:
    """Consecutive windows stepping by `test`: each trains on `train` and tests on the `test` after."""
    windows, train_from = [], start
    while train_from + train + test <= end:
        windows.append(Window(train_from, train_from + train, train_from + train + test))
        train_from += test
    return windows


def split_window(start: datetime, end: datetime, fraction: float) -> list[Window]:
    """One window: train on the first `fraction` of the span, test on the rest."""
    return [Window(start, start + (end - start) * fraction, end)]


def _replay_metrics(job: tuple[RunSpec, Combo]) -> dict[str, Any]:
    """One replay of a sweep, in a worker process with its own database connection."""
    spec, combo = job
    metrics = summarize(replay(spec.with_overrides(combo)))
    return {name: metrics[name] for name in KEPT}


def replay_all(jobs: Sequence[tuple[RunSpec, Combo]], processes: int) -> list[dict[str, Any]]:
    """Every job's metrics, in order, on up to `processes` worker processes."""
    if processes <= 1 or len(jobs) <= 1:
        return [_replay_metrics(job) for job in jobs]
    # Forked workers must not share the parent's connection: close it; each opens its own.
    connections.close_all()
    with multiprocessing.get_context("fork").Pool(min(processes, len(jobs))) as pool:
        return pool.map(_replay_metrics, jobs, chunksize=1)


def rank(combos: Sequence[Combo], results: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    rows = [{"params": combo, **metrics} for combo, metrics in zip(combos, results, strict=True)]
    return sorted(rows, key=lambda row: score(row, metric), reverse=True)


def walk_forward(
    combos: Sequence[Combo],
    windows: Sequence[Window],
    train: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    metric: str,
) -> list[dict[str, Any]]:
    """Per window: the combination best on its training part, its score there and on the test
    part, and the best test score any combination got (what hindsight would have chosen)."""
    report = []
    n = len(combos)
    for w, window in enumerate(windows):
        trained, tested = train[w * n : (w + 1) * n], test[w * n : (w + 1) * n]
        chosen = max(range(n), key=lambda i: score(trained[i], metric))
        report.append(
            {
                "train_from": window.train_from.isoformat(),
                "test_from": window.test_from.isoformat(),
                "test_to": window.test_to.isoformat(),
                "chosen": combos[chosen],
                f"train_{metric}": trained[chosen][metric],
                f"test_{metric}": tested[chosen][metric],
                f"best_test_{metric}": max(tested, key=lambda t: score(t, metric))[metric],
            }
        )
    return report


def combined(results: Sequence[dict[str, Any]], metric: str) -> Any:
    """`metric` over several windows' results: summed, averaged, or the worst drawdown; None when
    no window has it."""
    values = [Decimal(str(r[metric])) for r in results if r.get(metric) is not None]
    if not values:
        return None
    if metric == "trades":
        return int(sum(values))
    if metric in ADDITIVE:
        return str(sum(values))
    if metric == "max_drawdown":
        return str(max(values))
    return float(sum(values) / len(values))


def in_and_out_of_sample(
    combos: Sequence[Combo], train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """Each combination's `metric` over the training windows and over the test windows, with its
    out-of-sample trades and net PnL; best out of sample first."""
    n, rows = len(combos), []
    for i, combo in enumerate(combos):
        trained, tested = train[i::n], test[i::n]
        rows.append(
            {
                "params": combo,
                f"in_sample_{metric}": combined(trained, metric),
                f"out_of_sample_{metric}": combined(tested, metric),
                "out_of_sample_trades": combined(tested, "trades") or 0,
                "out_of_sample_net_pnl": combined(tested, "net_pnl") or "0",
            }
        )
    return sorted(rows, key=lambda row: score({metric: row[f"out_of_sample_{metric}"]}, metric), reverse=True)


def refusal(best: dict[str, Any]) -> str | None:
    """Why the out-of-sample winner `best` must not be promoted, or None."""
    if best["out_of_sample_trades"] == 0:
        return "the winner made no trades out of sample"
    if Decimal(best["out_of_sample_net_pnl"]) <= 0:
        return f"the winner lost money out of sample (net {best['out_of_sample_net_pnl']})"
    return None


@dataclass(frozen=True)
class SweepPlan:
    spec: RunSpec
    grid: Mapping[str, Sequence[str]]
    metric: str
    windows: Sequence[Window]
    processes: int = os.cpu_count() or 1


def run_sweep(plan: SweepPlan, promote: bool = False) -> BacktestRun:
    """Replay every combination over the whole slice and over every window, rank them, and record
    the sweep. The winner is the best out of sample; with `promote` it becomes a new active
    strategy version unless `refusal` names a reason not to (recorded as `not_promoted`)."""
    combos = combinations(plan.grid)
    spec = plan.spec
    jobs = [(spec, combo) for combo in combos]
    for window in plan.windows:
        jobs += [(spec.between(window.train_from, window.test_from), combo) for combo in combos]
        jobs += [(spec.between(window.test_from, window.test_to), combo) for combo in combos]
    results = replay_all(jobs, plan.processes)
    whole, rest = results[: len(combos)], results[len(combos) :]
    train = [r for i, r in enumerate(rest) if (i // len(combos)) % 2 == 0]
    test = [r for i, r in enumerate(rest) if (i // len(combos)) % 2 == 1]
    ranking = rank(combos, whole, plan.metric)
    samples = in_and_out_of_sample(combos, train, test, plan.metric)
    best = samples[0]
    run = BacktestRun.objects.create(
        kind=BacktestRun.Kind.SWEEP,
        status=BacktestRun.Status.DONE,
        symbol=spec.data.symbol,
        venues=list(spec.data.venues),
        parameters={"grid": dict(plan.grid), "metric": plan.metric, "base": dict(spec.overrides)},
        data_from=spec.data.start,
        data_to=spec.data.end,
        code_version=code_version(),
        metrics={
            "metric": plan.metric,
            "ranking": ranking,
            "walk_forward": walk_forward(combos, plan.windows, train, test, plan.metric),
            "in_and_out_of_sample": samples,
            "winner": best["params"],
            "chosen_by": f"out-of-sample {plan.metric}",
        },
        finished_at=timezone.now(),
    )
    why_not = refusal(best) if promote else None
    if why_not:
        log.warning("sweep #%s: nothing promoted: %s", run.pk, why_not)
        run.metrics["not_promoted"] = why_not
        run.save(update_fields=["metrics"])
    elif promote:
        winner = {name: _typed(name, value) for name, value in best["params"].items()}
        note = f"winner of backtest sweep #{run.pk} by out-of-sample {plan.metric}"
        run.promoted_version = strategies.promote(winner, note=note).version
        run.save(update_fields=["promoted_version"])
    return run


def _typed(name: str, value: str) -> Decimal | int:
    typed: Decimal | int = PARAM_TYPES[name](value)
    return typed
