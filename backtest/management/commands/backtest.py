"""`manage.py backtest`: replay recorded quotes through the live strategy, or sweep a grid of its
parameters; with --json the last line of output is one JSON object of the results."""

from __future__ import annotations

import json
import time
from argparse import ArgumentParser
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.utils.dateparse import parse_date, parse_datetime

from backtest.engine.source import Slice, base_config
from backtest.metrics import RANKABLE
from backtest.models import BacktestRun
from backtest.runs import RunSpec, build_setup, run_backtest
from backtest.sweep import SweepPlan, parse_grid, rolling_windows, run_sweep, split_window
from trading.core.numbers import plain
from trading.models import Quote as QuoteRow
from trading.models import Venue

BAR_WIDTH = 30


def moment(text: str | None, option: str) -> datetime | None:
    """An ISO date or date-time, UTC unless it says otherwise."""
    if text is None:
        return None
    parsed = parse_datetime(text)
    if parsed is None and (day := parse_date(text)) is not None:
        parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if parsed is None:
        raise CommandError(f"{option}: not an ISO date or time: {text!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """["a=1", "b=2"] -> {"a": "1", "b": "2"}."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CommandError(f"{option} takes key=value, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def number(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"{option}: not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise CommandError(f"{option}: must be a non-negative number, got {text!r}")
    return value


def funds(items: Sequence[str], venues: Sequence[str]) -> dict[str, dict[str, Decimal]]:
    """--fund ASSET=amount (every venue) or venue:ASSET=amount (one venue)."""
    result: dict[str, dict[str, Decimal]] = {name: {} for name in venues}
    for key, amount in pairs(items, "--fund").items():
        venue, _, asset = key.rpartition(":")
        for name in [venue] if venue else venues:
            if name not in result:
                raise CommandError(f"--fund: {name!r} is not one of the replayed venues")
            result[name][asset] = number(amount, "--fund")
    return result


class Progress:
    """A text progress bar on the command's stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, stream: OutputWrapper) -> None:
        self.total, self.done, self._drawn = max(total, 1), 0, 0.0
        self.stream = stream

    def __call__(self, rows: int) -> None:
        self.done += rows
        if time.monotonic() - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = time.monotonic()
            filled = BAR_WIDTH * min(self.done, self.total) // self.total
            share = 100 * min(self.done, self.total) // self.total
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            ending = "\n" if self.done >= self.total else ""
            self.stream.write(f"\r[{bar}] {share:3d}% {self.done:,}/{self.total:,} quotes", ending=ending)
            self.stream.flush()


class Command(BaseCommand):
    help = (
        "Replay recorded quotes through the live strategy and fill model, with per-venue fees, "
        "latency and pre-funded balances; or sweep a parameter grid with walk-forward windows."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--from", dest="start", help="ISO date/time of the first quote (UTC)")
        parser.add_argument("--to", dest="end", help="ISO date/time before which quotes end (UTC)")
        parser.add_argument("--symbol", help="Default: the active strategy's first symbol")
        parser.add_argument(
            "--venues", help="Comma-separated venue names (default: every venue with quotes of the symbol)"
        )
        parser.add_argument(
            "--param", action="append", default=[], help="Strategy override, e.g. min_profit_bps=10"
        )
        parser.add_argument("--fee", action="append", default=[], help="Taker fee, e.g. kraken=0.0026")
        parser.add_argument(
            "--latency-ms", action="append", default=[], help="Decision-to-arrival latency, e.g. kraken=120"
        )
        parser.add_argument(
            "--fund",
            action="append",
            default=[],
            help="Starting balance: ASSET=amount for every venue or venue:ASSET=amount "
            "(default: the venue's Balance rows, else 1 base and 50,000 quote)",
        )
        parser.add_argument("--json", action="store_true", help="End with one line of JSON")
        parser.add_argument("--plot", type=Path, help="PNG report path (default reports/backtest-<id>.png)")
        parser.add_argument("--no-plot", action="store_true", help="Skip the PNG report")
        parser.add_argument("--grid", nargs="+", action="extend", help="Sweep, e.g. trade_size=0.01,0.05")
        parser.add_argument("--metric", choices=RANKABLE, default="net_pnl", help="Sweep ranking metric")
        parser.add_argument("--train-days", type=float, help="Walk-forward training window")
        parser.add_argument("--test-days", type=float, help="Walk-forward test window")
        parser.add_argument("--split", type=float, default=0.7, help="Train share without windows (0.7)")
        parser.add_argument("--processes", type=int, help="Sweep workers (default: every core)")
        parser.add_argument(
            "--promote", action="store_true", help="Make the sweep's winner the active version"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        spec = self.spec(options)
        if options["grid"]:
            self.sweep(spec, options)
        else:
            self.single(spec, options)

    # --- wiring --------------------------------------------------------------------------------

    def spec(self, options: dict[str, Any]) -> RunSpec:
        symbol = options["symbol"] or next(iter(base_config().symbols), None)
        if not symbol:
            raise CommandError("--symbol is required when no active strategy names one")
        venues = self.venues(options["venues"], symbol)
        data = Slice(symbol, venues, moment(options["start"], "--from"), moment(options["end"], "--to"))
        if data.start and data.end and data.end <= data.start:
            raise CommandError("--to must be later than --from")
        latency = {
            k: int(number(v, "--latency-ms")) for k, v in pairs(options["latency_ms"], "--latency-ms").items()
        }
        spec = RunSpec(
            data=data,
            overrides=pairs(options["param"], "--param"),
            fees={k: number(v, "--fee") for k, v in pairs(options["fee"], "--fee").items()},
            latency_ms=latency,
            funds=funds(options["fund"], venues),
        )
        unknown = (set(spec.fees) | set(spec.latency_ms)) - set(venues)
        if unknown:
            raise CommandError(f"not replayed venues: {', '.join(sorted(unknown))}")
        try:
            build_setup(spec)  # fail on a bad parameter before any work
        except (ValueError, Venue.DoesNotExist) as exc:
            raise CommandError(str(exc)) from exc
        return spec

    def venues(self, raw: str | None, symbol: str) -> tuple[str, ...]:
        """The named venues, else every venue with recorded quotes of `symbol`."""
        recorded = QuoteRow.objects.filter(symbol=symbol).values("venue").distinct()
        every = tuple(Venue.objects.filter(pk__in=recorded).values_list("name", flat=True))
        names = tuple(name.strip() for name in raw.split(",") if name.strip()) if raw else every
        unknown = set(names) - set(Venue.objects.values_list("name", flat=True))
        if unknown:
            raise CommandError(f"unknown venues: {', '.join(sorted(unknown))}")
        if len(names) < 2:
            raise CommandError("arbitrage needs at least two venues")
        return names

    def plot_path(self, options: dict[str, Any]) -> Path | None:
        if options["no_plot"]:
            return None
        if options["plot"] is not None:
            return Path(options["plot"])
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return Path(settings.BASE_DIR) / "reports" / f"backtest-{stamp}.png"

    # --- one run -------------------------------------------------------------------------------

    def single(self, spec: RunSpec, options: dict[str, Any]) -> None:
        progress = Progress(spec.data.count(), self.stderr)
        run = run_backtest(spec, self.plot_path(options), progress)
        for line in summary_lines(run):
            self.stdout.write(line)
        if options["json"]:
            self.stdout.write(json.dumps({"run": run.pk, **run.metrics, "plot": run.plot or None}))

    # --- a sweep -------------------------------------------------------------------------------

    def sweep(self, spec: RunSpec, options: dict[str, Any]) -> None:
        try:
            grid = parse_grid(options["grid"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        plan = SweepPlan(spec, grid, options["metric"], self.windows(spec, options))
        if options["processes"]:
            plan = SweepPlan(spec, grid, options["metric"], plan.windows, options["processes"])
        self.stderr.write(
            f"sweeping {len(plan.windows)} walk-forward window(s) on {plan.processes} process(es)"
        )
        run = run_sweep(plan, promote=options["promote"])
        for line in sweep_lines(run, options["promote"]):
            self.stdout.write(line)
        if options["json"]:
            self.stdout.write(
                json.dumps({"run": run.pk, "promoted_version": run.promoted_version, **run.metrics})
            )

    def windows(self, spec: RunSpec, options: dict[str, Any]) -> list[Any]:
        first, last = spec.data.span()
        start = spec.data.start or first
        end = spec.data.end or (last + timedelta(milliseconds=1) if last else None)  # end is exclusive
        if start is None or end is None:
            raise CommandError("no recorded quotes in the chosen slice")
        if options["train_days"] or options["test_days"]:
            if not (options["train_days"] and options["test_days"]):
                raise CommandError("--train-days and --test-days go together")
            train, test = timedelta(days=options["train_days"]), timedelta(days=options["test_days"])
            windows = rolling_windows(start, end, train, test)
            if not windows:
                raise CommandError("the slice is shorter than one training plus one test window")
            return windows
        if not 0 < options["split"] < 1:
            raise CommandError("--split is the training share, between 0 and 1")
        return split_window(start, end, options["split"])


def money(text: str) -> str:
    """An exact decimal string shown to 8 places, the precision a reader compares."""
    return plain(Decimal(text), 8, grouped=True)


def summary_lines(run: BacktestRun) -> list[str]:
    m = run.metrics
    lines = [
        f"backtest #{run.pk} {run.symbol} on {', '.join(run.venues)} ({run.code_version})",
        f"  data        {run.data_from} .. {run.data_to}, {m['quotes']:,} quotes",
        f"  trades      {m['trades']} ({m['trades_missed']} with a missed leg), win rate {m['win_rate']}",
        f"  outcomes    {m['outcomes'] or 'none'} (after retries and hedges, as live settles)",
        f"  PnL         gross {money(m['gross_pnl'])}, fees {money(m['fees'])}, net {money(m['net_pnl'])}",
        f"  risk        max drawdown {money(m['max_drawdown'])}, "
        f"hourly Sharpe (annualized) {m['sharpe_hourly']}",
        f"  crossings   {m['crossings']} (ask under bid before fees); opportunities (past fees) "
        f"seen {m['opportunities_seen']} ({m['opportunities_fleeting']} at one moment only), "
        f"taken {m['opportunities_taken']}, average lifetime {m['avg_opportunity_ms']} ms "
        "(of those seen at more than one moment)",
        f"  rejected    {m['rejected'] or 'none'}",
    ]
    for venue, balances in m["inventory"].items():
        held = ", ".join(f"{asset} {money(amount)}" for asset, amount in balances.items())
        lines.append(f"  inventory   {venue}: {held}")
    if run.plot:
        lines.append(f"  report      {run.plot}")
    return lines


def sweep_lines(run: BacktestRun, promoted_requested: bool) -> list[str]:
    m = run.metrics
    metric = m["metric"]
    lines = [f"sweep #{run.pk}: ranked by {metric} over the whole slice"]
    lines += [f"  {row[metric]!s:>16}  trades {row['trades']:>5}  {row['params']}" for row in m["ranking"]]
    lines.append(f"in sample (training windows) and out of sample (test windows), by {metric}:")
    lines += [
        f"  in {row[f'in_sample_{metric}']!s:>16}  out {row[f'out_of_sample_{metric}']!s:>16}  "
        f"trades out {row['out_of_sample_trades']:>5}  {row['params']}"
        for row in m["in_and_out_of_sample"]
    ]
    lines.append("walk-forward (chosen on train, scored on the window after):")
    for window in m["walk_forward"]:
        lines.append(
            f"  {window['test_from']} .. {window['test_to']}: chose {window['chosen']}, "
            f"train {window[f'train_{metric}']}, test {window[f'test_{metric}']}, "
            f"best possible {window[f'best_test_{metric}']}"
        )
    lines.append(f"winner, chosen by {m['chosen_by']} only: {m['winner']}")
    if run.promoted_version:
        lines.append(f"promoted {m['winner']} as strategy version {run.promoted_version}")
    elif promoted_requested:
        lines.append(f"nothing promoted: {m['not_promoted']}")
    return lines
