"""Supervised child processes: each in its own process group, logging to its own file, restarted
with a growing back-off when it dies, and stopped in stages (SIGTERM to each child, then SIGKILL
to its whole group).

SIGTERM goes to the child alone, so a Celery worker shuts down warm: its pool processes finish the
tasks they are running before it exits. A process group per child means the SIGKILL that follows
reaches the grandchildren too, and Ctrl-C in the terminal reaches only the supervisor, which then
stops the children in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# A child that ran this long before dying was healthy: its next restart starts the back-off over.
STABLE_AFTER_S = 30.0


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    args: Sequence[str]
    env: dict[str, str]


@dataclass
class Child:
    spec: ProcessSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = FIRST_BACKOFF_S
    restarts: int = 0
    log: IO[bytes] | None = field(default=None, repr=False)


def next_backoff(current_s: float, ran_for_s: float) -> float:
    """The wait before the restart after next: doubled each time, capped, reset after a stable run."""
    if ran_for_s >= STABLE_AFTER_S:
        return FIRST_BACKOFF_S
    return min(current_s * 2.0, MAX_BACKOFF_S)


def signal_group(pid: int, signum: int) -> None:
    """Send `signum` to the process group led by `pid`; a group that is already gone is the goal."""
    # ProcessLookupError means every process of the group has exited: nothing left to signal.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


class Supervisor:
    """Starts children, restarts the ones that die, and stops them all.

    `report` receives one line per event worth telling the person running the demo.
    """

    def __init__(
        self,
        log_dir: Path,
        cwd: Path,
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.report = report
        self.clock = clock
        self.children: dict[str, Child] = {}

    def start(self, spec: ProcessSpec) -> Child:
        """Start `spec` now; its output (stdout and stderr) is appended to <log_dir>/<name>.log."""
        child = self.children.get(spec.name) or Child(spec, self.log_dir / f"{spec.name}.log")
        self.children[spec.name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if child.log is None:
            child.log = child.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        child.log.write(f"=== {stamp} starting {child.spec.name}: {' '.join(child.spec.args)}\n".encode())
        child.log.flush()
        child.proc = subprocess.Popen(
            list(child.spec.args),
            cwd=self.cwd,
            env=child.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=child.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.started_at = self.clock()
        child.restart_at = None

    def check(self) -> None:
        """Notice children that died and restart those whose back-off has elapsed."""
        now = self.clock()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                continue
            if child.proc is not None and child.proc.poll() is not None:
                self._schedule_restart(child, now)

    def _schedule_restart(self, child: Child, now: float) -> None:
        assert child.proc is not None
        # The leader is gone, but its group may not be (orphaned pool processes): clear it first.
        signal_group(child.proc.pid, signal.SIGKILL)
        ran_for = now - child.started_at
        wait = FIRST_BACKOFF_S if ran_for >= STABLE_AFTER_S else child.backoff_s
        child.backoff_s = next_backoff(wait, ran_for)
        child.restart_at = now + wait
        self.report(
            f"{child.spec.name} exited with code {child.proc.returncode} after {ran_for:.0f}s; "
            f"restarting in {wait:.0f}s (log: {child.log_path})"
        )

    def stop(self, names: Iterable[str], grace_s: float) -> None:
        """SIGTERM the named children, wait up to `grace_s` for them, then SIGKILL their groups."""
        children = [self.children[name] for name in names if name in self.children]
        for child in children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + grace_s
        for child in children:
            self._wait_or_kill(child, deadline)

    def _wait_or_kill(self, child: Child, deadline: float) -> None:
        if child.proc is None:
            return
        try:
            child.proc.wait(timeout=max(deadline - self.clock(), 0.0))
        except subprocess.TimeoutExpired:
            self.report(f"{child.spec.name} did not stop in time; killing it")
        # Kill the whole group even after a clean exit: a grandchild may have outlived its parent.
        signal_group(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        if child.log is not None:
            child.log.close()
            child.log = None

    def stop_all(self, grace_s: float, first: Sequence[str] = (), last: Sequence[str] = ()) -> None:
        """Stop every child: those named in `first` before the others (what makes new work, so
        that the rest finish what is under way), those in `last` after all of them (e.g. their
        broker)."""
        self.stop(first, grace_s)
        self.stop([name for name in self.children if name not in (*first, *last)], grace_s)
        self.stop(last, grace_s)

    @property
    def restart_counts(self) -> dict[str, int]:
        return {name: child.restarts for name, child in self.children.items()}
