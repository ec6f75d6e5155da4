"""Checking a file's rows: named bad rows, counts with line numbers, order and gaps of a series."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
TIMEFRAME_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Enough line numbers to find the trouble in an editor, few enough to read in a summary.
LINES_KEPT = 5


class BadRow(ValueError):
    """A row that must not become a quote. `reason` is a short stable name for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Tally:
    """Rows counted by reason, with the line numbers of the first few of each reason."""

    counts: Counter[str] = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, line: int) -> None:
        self.counts[reason] += 1
        first = self.lines.setdefault(reason, [])
        if len(first) < LINES_KEPT:
            first.append(line)

    def total(self) -> int:
        return sum(self.counts.values())


class SeriesOrder:
    """The order of one series: each row's key (a bar's open time, a quote's sequence number) must
    be above the last accepted one, and should be exactly `step` above it.

    `admit` returns how many steps are missing before the row (0 when it follows on) and raises
    BadRow("duplicate") or BadRow("unsorted") for a row that is not later than the last accepted.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.last: int | None = None

    def admit(self, key: int) -> int:
        last = self.last
        if last is not None and key == last:
            raise BadRow("duplicate", f"{key} repeats the previous row")
        if last is not None and key < last:
            raise BadRow("unsorted", f"{key} comes after {last}")
        self.last = key
        return 0 if last is None else max(0, (key - last) // self.step - 1)


def decimal(text: str, what: str, *, zero_ok: bool = False) -> Decimal:
    """A finite positive Decimal from `text` (or zero, when `zero_ok`). Raises BadRow unparsable
    or non_positive."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadRow("unparsable", f"{what} is not a number: {text!r}") from None
    if not value.is_finite():
        raise BadRow("unparsable", f"{what} is {value}")
    if value < 0 or (value == 0 and not zero_ok):
        raise BadRow("non_positive", f"{what} must be positive, got {value}")
    return value


def timestamp_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 time ("2023-03-01T00:00:00Z"); a time without an offset
    is UTC. Exact: no float arithmetic. Raises BadRow("unparsable")."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRow("unparsable", f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MS


def utc(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds, exactly."""
    return EPOCH + ms * MS


def iso(ms: int) -> str:
    """The ISO 8601 UTC spelling of epoch milliseconds, as the files use it: whole seconds as
    "2023-03-01T00:01:00Z", else with milliseconds."""
    moment = utc(ms)
    spec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def timeframe_ms(timeframe: str) -> int:
    """A bar length such as "1m", "5m", "1h" or "1d" in milliseconds. Raises ValueError."""
    count, unit = timeframe[:-1], timeframe[-1:]
    if not count.isdigit() or int(count) == 0 or unit not in TIMEFRAME_UNITS_MS:
        raise ValueError(f"a timeframe looks like 1m, 5m, 1h or 1d, got {timeframe!r}")
    return int(count) * TIMEFRAME_UNITS_MS[unit]
