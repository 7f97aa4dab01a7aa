"""SIGHUP reloads and killed workers under load: failed connections and restart times.

    python3 -m loadtest.reload [--workers 2] [--rate 1000] [--seconds 15] [--reloads 5] [--kills 3] [--json]

The measurement behind "SIGHUP: a reload with zero refused connections; a worker that
dies is replaced within 1 s". This module owns one run: a ``python3 -m server
--workers N`` subprocess (ephemeral ports on 127.0.0.1, JSON log on a pipe, ECHO_*
variables dropped from its environment, in a process group of its own), a connect
loop against it, the signals sent to it, and the report. It imports nothing from
tests/ and, from server/, only the crash-loop rule it must keep clear of.

How: the server and its log are loadtest/server_log.py (nothing waits without a
deadline); the load is loadtest/connect_loop.py at --rate connections a second for
--seconds, each attempt classified ok, refused, reset, unanswered, wrong or other.

- Meanwhile: --reloads SIGHUPs spread evenly over the first 2/3 of the run, each
  waiting (up to RELOAD_WAIT_S) for ``reloaded`` of the next generation before the
  next; then --kills ``kill -9`` of a live worker of the current generation (slots in
  turn), spread over the rest but for its last second and, from the crash loop's
  count of exits on, spaced so that it cannot trigger. For each kill: the time from
  ``os.kill`` to the arrival of the replacement's ``worker_ready`` line (same slot and
  generation, a new pid), as this process sees it, and that line's ``restart_s`` (the
  supervisor's own, from reaping the dead worker to the replacement being ready).
- A failed attempt that ended within KILL_WINDOW_S after a kill is counted in that
  kill's window (the killed worker's own connections may fail); every other failure
  counts against the run, and the first few are listed with when they happened.
- At the end: SIGTERM, the exit awaited (bounded), the stopped line's count of
  restarted workers and any worker that exited unasked (not exit 0, not killed here).
  On any error, Ctrl-C or SIGTERM to this process, its process group is SIGKILLed.

Exit 0 if there was no failure outside the kill windows, every kill was replaced
within REPLACED_WITHIN_S (as seen here), every reload and kill asked for happened, and
the server stopped with exit 0; else 1 (2 for bad arguments). --json prints the
report as one JSON document instead of the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.connect_loop import ATTEMPT_TIMEOUT_S, ConnectLoop
from loadtest.reload_report import KILL_WINDOW_S, in_window, report, summary
from loadtest.server_log import Record, ServerLog, _Tail, address_of, start_server
from server.workers.monitor import CRASH_LOOP_DEATHS, CRASH_LOOP_WINDOW_S

REPLACED_WITHIN_S = 1.0  # the goal: kill -> replacement ready
START_WAIT_S = 20.0  # python3 -m server -> ready
RELOAD_WAIT_S = 10.0  # SIGHUP -> reloaded
REPLACE_WAIT_S = 5.0  # kill -> worker_ready of the replacement (then it counts as too slow)
STOP_WAIT_S = 15.0  # SIGTERM -> exit (the drain is 2 s by default)
END_MARGIN_S = 1.0  # no kill in the run's last second: its window and restart are inside the load
# Kills this far apart never make CRASH_LOOP_DEATHS exits within CRASH_LOOP_WINDOW_S.
KILL_SPACING_S = CRASH_LOOP_WINDOW_S / (CRASH_LOOP_DEATHS - 1) + 0.5


class HarnessError(Exception):
    """The run could not be made (the server did not start): no report."""


# --- the run ------------------------------------------------------------------------


@dataclass
class Settings:
    workers: int = 2
    rate: float = 1000.0
    seconds: float = 15.0
    reloads: int = 5
    kills: int = 3

    def reload_times(self) -> list[float]:
        """Offsets from the load's start: evenly over its first 2/3."""
        phase = self.seconds * 2 / 3
        return [phase * (n + 0.5) / self.reloads for n in range(self.reloads)]

    def kill_times(self) -> list[float]:
        """Offsets from the load's start: evenly over the last 1/3 but for END_MARGIN_S,
        at least KILL_SPACING_S apart once there are enough to make a crash loop."""
        begin = self.seconds * 2 / 3
        phase = max(0.0, self.seconds - END_MARGIN_S - begin)
        spacing = phase / self.kills if self.kills else 0.0
        return [begin + spacing * (n + 0.5) for n in range(self.kills)]

    def problem(self) -> str | None:
        if self.workers < 2:
            return "--workers must be at least 2 (one worker has no supervisor to restart it)"
        if self.rate <= 0 or self.seconds < 3:
            return "--rate must be positive and --seconds at least 3"
        if self.reloads < 0 or self.kills < 0:
            return "--reloads and --kills cannot be negative"
        if self.kills >= CRASH_LOOP_DEATHS:
            times = self.kill_times()
            if min(b - a for a, b in itertools.pairwise(times)) < KILL_SPACING_S:
                need = math.ceil(3 * (KILL_SPACING_S * self.kills + END_MARGIN_S))
                return (
                    f"{self.kills} kills would be closer than {KILL_SPACING_S:.1f} s apart (a crash loop is "
                    f"{CRASH_LOOP_DEATHS} exits within {CRASH_LOOP_WINDOW_S:.0f} s): use --seconds {need} or more"
                )
        return None


@dataclass
class Kill:
    at: float  # monotonic, just before os.kill
    worker: int
    pid: int
    status: str | None = None  # the worker_exited line's
    connections_lost: int | None = None
    replacement_pid: int | None = None
    ready_s: float | None = None  # kill -> the replacement's worker_ready line arriving here
    restart_s: float | None = None  # the supervisor's own
    window: Counter[str] = field(default_factory=Counter)  # failures within KILL_WINDOW_S


@dataclass
class Run:
    settings: Settings
    address: str = ""
    admin_address: str = ""
    reload_s: list[float] = field(default_factory=list)  # SIGHUP -> reloaded, as seen here
    kills: list[Kill] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exit_code: int | None = None


def run(settings: Settings) -> tuple[Run, ConnectLoop, ServerLog]:
    proc = start_server(settings.workers)
    assert proc.stdout is not None and proc.stderr is not None
    log = ServerLog(proc.stdout)
    stderr = _Tail(proc.stderr)
    result = Run(settings)
    try:
        found = log.wait_for(lambda r: r.get("event") == "ready", START_WAIT_S)
        listening = log.named("listening")
        if found is None or not listening:
            raise HarnessError(f"the server was not ready within {START_WAIT_S:.0f} s:\n{stderr.text()}")
        result.address = str(found[1]["address"])
        result.admin_address = str(listening[0].get("admin_address", ""))
        load = ConnectLoop(address_of(found[1]), settings.rate, settings.seconds)
        load.start()
        try:
            _reloads(proc, log, load, result)
            _kills(log, load, result)
            log.until(load.ends_at)
        finally:
            load.stop()  # past its end by now, unless the log ended early or something raised
            if not load.join(ATTEMPT_TIMEOUT_S + 2.0):  # an attempt under way ends by its deadline
                result.problems.append("a connect-loop thread did not finish")
        if log.ended:
            result.problems.append(f"the server's log ended during the run:\n{stderr.text()}")
        proc.send_signal(signal.SIGTERM)
        try:
            result.exit_code = proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            result.problems.append(f"the server did not exit within {STOP_WAIT_S:.0f} s of SIGTERM")
        if result.exit_code not in (0, None):
            result.problems.append(f"the server exited {result.exit_code}:\n{stderr.text()}")
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
            except ProcessLookupError:
                pass
            proc.wait(10)
        log.finish(5.0)
        if log.ended and stderr.finished(1.0):  # no thread reads them any more
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
    _judge(result, load, log)
    return result, load, log


def _reloads(proc: subprocess.Popen[bytes], log: ServerLog, load: ConnectLoop, result: Run) -> None:
    for offset in result.settings.reload_times():
        log.until(load.started + offset)
        if log.ended:
            return
        log.drain()
        target = log.generation + 1
        signalled = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        found = log.wait_for(_reload_of(target), RELOAD_WAIT_S, since=signalled)
        if found is None:
            result.problems.append(f"no reloaded line for generation {target} within {RELOAD_WAIT_S:.0f} s")
            return
        arrived, record = found
        if record["event"] == "reload_failed":
            result.problems.append(f"reload to generation {target} failed: {record.get('reason')}")
            return
        result.reload_s.append(arrived - signalled)


def _kills(log: ServerLog, load: ConnectLoop, result: Run) -> None:
    settings = result.settings
    for number, offset in enumerate(settings.kill_times()):
        log.until(load.started + offset)
        if log.ended:
            return
        log.drain()
        slot = number % settings.workers
        current = {pid: w for pid, (w, g) in log.live.items() if g == log.generation}
        chosen = [pid for pid, w in current.items() if w == slot] or sorted(current)
        if not chosen:
            result.problems.append(f"kill {number + 1}: no live worker of generation {log.generation}")
            return
        pid = chosen[0]
        worker, generation = log.live[pid]
        kill = Kill(at=time.monotonic(), worker=worker, pid=pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            result.problems.append(f"kill {number + 1}: worker {worker} (pid {pid}) was already gone")
            continue
        result.kills.append(kill)
        replaced = log.wait_for(_replacement(worker, generation, pid), REPLACE_WAIT_S, since=kill.at)
        exited = log.wait_for(_exit_of(pid), 0.0)
        if exited is not None:
            kill.status = str(exited[1].get("status"))
            kill.connections_lost = exited[1].get("connections_lost")
        if replaced is None:
            result.problems.append(f"kill {number + 1}: worker {worker} not replaced within {REPLACE_WAIT_S:.0f} s")
            continue
        arrived, record = replaced
        kill.replacement_pid = int(record["pid"])
        kill.ready_s = arrived - kill.at
        kill.restart_s = float(record["restart_s"])


def _reload_of(generation: int) -> Callable[[Record], bool]:
    """Matches the end of the reload to ``generation``: done or failed."""
    return lambda r: r.get("event") in ("reloaded", "reload_failed") and r.get("generation") == generation


def _replacement(worker: int, generation: int, pid: int) -> Callable[[Record], bool]:
    """Matches the worker_ready of the worker that replaces ``pid`` in its slot."""

    def matches(record: Record) -> bool:
        return (
            record.get("event") == "worker_ready"
            and record.get("worker") == worker
            and record.get("generation") == generation
            and record.get("pid") != pid
            and "restart_s" in record
        )

    return matches


def _exit_of(pid: int) -> Callable[[Record], bool]:
    return lambda record: record.get("event") == "worker_exited" and record.get("pid") == pid


def _judge(result: Run, load: ConnectLoop, log: ServerLog) -> None:
    """Sort the failures into kill windows; add every unmet goal to the problems."""
    settings = result.settings
    outside = [f for f in load.failures if not in_window(f, result.kills)]
    for failure in load.failures:
        for kill in result.kills:
            if kill.at <= failure.ended <= kill.at + KILL_WINDOW_S:
                kill.window[failure.kind] += 1
                break
    if outside:
        kinds = Counter(f.kind for f in outside)
        result.problems.append(f"{len(outside)} failed connections outside the kill windows: {dict(kinds)}")
    if sum(load.counts.values()) == 0:
        result.problems.append("no connection was attempted")
    if len(result.reload_s) < settings.reloads:
        result.problems.append(f"{len(result.reload_s)} of {settings.reloads} reloads done")
    replaced = [k for k in result.kills if k.ready_s is not None]
    if len(replaced) < settings.kills:
        result.problems.append(f"{len(replaced)} of {settings.kills} kills done and replaced")
    slow = [k for k in replaced if k.ready_s is not None and k.ready_s > REPLACED_WITHIN_S]
    if slow:
        result.problems.append(f"{len(slow)} kills not replaced within {REPLACED_WITHIN_S:.0f} s")
    killed = {k.pid for k in result.kills}
    for record in log.named("worker_exited"):
        if record.get("pid") not in killed and record.get("status") != "exit 0":
            result.problems.append(f"worker {record.get('worker')} (pid {record.get('pid')}): {record.get('status')}")
    for record in log.named("failed"):
        result.problems.append(f"the server failed: {record.get('reason')}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.reload", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rate", type=float, default=1000.0, help="connections per second at most (default 1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the connect loop (default 15)")
    parser.add_argument("--reloads", type=int, default=5, help="SIGHUPs over the first 2/3 (default 5)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 of a worker over the last 1/3 (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    settings = Settings(args.workers, args.rate, args.seconds, args.reloads, args.kills)
    problem = settings.problem()
    if problem is not None:
        parser.error(problem)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally clauses stop the server
    try:
        result, load, log = run(settings)
    except HarnessError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the server was stopped", file=sys.stderr)
        return 130
    doc = report(result, load, log)
    print(json.dumps(doc, indent=2) if args.json else summary(doc))
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
