"""A backtest run end to end: settings from the database and the options, the replay of the
recorded quotes, its metrics, trades and PNG report, all kept on a BacktestRun row."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backtest.engine import Replay, Result, Setup, SimTrade
from backtest.engine.source import Slice, base_config, quote_chunks, venue_states, with_overrides
from backtest.metrics import summarize
from backtest.models import BacktestRun, BacktestTrade
from backtest.report import write_report
from trading.clock import from_ms
from trading.core.types import split_symbol
from trading.core_inputs import strategy_params
from trading.models import Balance

log = logging.getLogger(__name__)

# Each venue's starting balance of an asset that neither the options nor Balance rows give.
DEFAULT_FUNDS = {"base": Decimal(1), "quote": Decimal(50_000)}


@dataclass(frozen=True)
class RunSpec:
    """What to replay and how: the data slice, strategy overrides (name to text), taker fees,
    latencies (ms) and starting balances per venue (venue to asset to amount)."""

    data: Slice
    overrides: Mapping[str, str] = field(default_factory=dict)
    fees: Mapping[str, Decimal] = field(default_factory=dict)
    latency_ms: Mapping[str, int] = field(default_factory=dict)
    funds: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)

    def between(self, start: datetime | None, end: datetime | None) -> RunSpec:
        return replace(self, data=replace(self.data, start=start, end=end))

    def with_overrides(self, overrides: Mapping[str, str]) -> RunSpec:
        return replace(self, overrides={**self.overrides, **overrides})


def code_version() -> str:
    """The git commit of the code, else the installed package's version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("no git commit for the code version (%s): using the package version", exc)
        commit = ""
    if commit:
        return commit
    try:
        return f"arbsite {metadata.version('arbsite')}"
    except metadata.PackageNotFoundError:
        return "unversioned"


def starting_funds(spec: RunSpec) -> dict[str, dict[str, Decimal]]:
    """Per venue: the options' balances, else the venue's Balance rows, else DEFAULT_FUNDS."""
    base, quote = split_symbol(spec.data.symbol)
    funds: dict[str, dict[str, Decimal]] = {}
    for name in spec.data.venues:
        recorded = dict(Balance.objects.filter(venue__name=name).values_list("asset", "free"))
        defaults = {base: DEFAULT_FUNDS["base"], quote: DEFAULT_FUNDS["quote"]}
        funds[name] = {**defaults, **recorded, **spec.funds.get(name, {})}
    return funds


def build_setup(spec: RunSpec) -> Setup:
    """The engine's settings. Raises ValueError for a bad override, Venue.DoesNotExist for an
    unknown venue."""
    config = base_config()
    params = with_overrides(strategy_params(config), spec.overrides)
    params = replace(params, symbols=(spec.data.symbol,))
    states = venue_states(config, spec.data.venues, spec.fees, starting_funds(spec))
    if "max_quote_age_ms" in spec.overrides:
        # The run's own choice (minute bars want a minute) is every replayed venue's limit too.
        states = {
            name: replace(state, max_quote_age_ms=params.max_quote_age_ms) for name, state in states.items()
        }
    return Setup(
        params,
        states,
        dict(spec.latency_ms),
        retries=settings.LEG_RETRIES,
        hedge_attempts=settings.HEDGE_ATTEMPTS,
        hedge_max_loss_bps=Decimal(settings.HEDGE_MAX_LOSS_BPS),
    )


def replay(spec: RunSpec, progress: Callable[[int], None] | None = None) -> Result:
    return Replay(build_setup(spec), spec.data.symbol).run(quote_chunks(spec.data), progress=progress)


def describe(spec: RunSpec, setup: Setup) -> dict[str, Any]:
    """The run's parameters as stored on its row."""
    params = setup.params
    return {
        "min_profit_bps": str(params.min_profit_bps),
        "trade_size": str(params.trade_size),
        "max_quote_age_ms": params.max_quote_age_ms,
        "venue_quote_age_ms": {name: state.max_quote_age_ms for name, state in setup.venues.items()},
        "ttl_ms": params.ttl_ms,
        "slippage_bps": str(params.slippage_bps),
        "taker_fees": {name: str(state.fees.taker) for name, state in setup.venues.items()},
        "latency_ms": {name: setup.latency(name) for name in setup.venues},
        "settlement": {
            "retries": setup.retries,
            "hedge_attempts": setup.hedge_attempts,
            "hedge_max_loss_bps": str(setup.hedge_max_loss_bps),
        },
        "funds": {
            name: {asset: str(amount) for asset, amount in state.balances.items()}
            for name, state in setup.venues.items()
        },
    }


def run_backtest(
    spec: RunSpec, plot: Path | None = None, progress: Callable[[int], None] | None = None
) -> BacktestRun:
    """Replay `spec` and record it: a BacktestRun with metrics, its trades and, unless `plot` is
    None, the PNG report at `plot`. A failure is recorded on the row, then raised."""
    setup = build_setup(spec)
    run = BacktestRun.objects.create(
        symbol=spec.data.symbol,
        venues=list(spec.data.venues),
        parameters=describe(spec, setup),
        data_from=spec.data.start,
        data_to=spec.data.end,
        code_version=code_version(),
    )
    try:
        result = Replay(setup, spec.data.symbol).run(quote_chunks(spec.data), progress=progress)
        _record(run, result, setup, plot)
    except Exception as exc:
        BacktestRun.objects.filter(pk=run.pk).update(
            status=BacktestRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    return run


def _record(run: BacktestRun, result: Result, setup: Setup, plot: Path | None) -> None:
    base, _ = split_symbol(result.symbol)
    if plot is not None:
        start = {name: state.free(base) for name, state in setup.venues.items()}
        write_report(result, start, plot, f"Backtest #{run.pk}: {result.symbol} {', '.join(setup.venues)}")
        run.plot = str(plot)
    run.metrics = summarize(result)
    run.quotes = result.rows
    run.data_from = run.data_from or (from_ms(result.first_ms) if result.first_ms is not None else None)
    run.data_to = run.data_to or (from_ms(result.last_ms) if result.last_ms is not None else None)
    run.status = BacktestRun.Status.DONE
    run.finished_at = timezone.now()
    with transaction.atomic():
        rows = [_trade_row(run, trade) for trade in result.trades]
        BacktestTrade.objects.bulk_create(rows, batch_size=1000)
        run.save()


def _trade_row(run: BacktestRun, trade: SimTrade) -> BacktestTrade:
    return BacktestTrade(
        run=run,
        decided_at=from_ms(trade.decided_ms),
        settled_at=from_ms(trade.settled_ms),
        buy_venue=trade.buy_venue,
        sell_venue=trade.sell_venue,
        amount=trade.amount,
        bought=trade.bought,
        sold=trade.sold,
        buy_price=trade.cost / trade.bought if trade.bought else None,
        sell_price=trade.proceeds / trade.sold if trade.sold else None,
        fees=trade.fees,
        expected_pnl=trade.expected_net,
        gross_pnl=trade.gross_pnl,
        net_pnl=trade.net_pnl,
        status=BacktestTrade.Status.FILLED if trade.filled else BacktestTrade.Status.MISSED,
    )
