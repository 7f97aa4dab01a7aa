"""WorkerCounts: what the supervisor knows of its workers' counters, for every reader.

Each live worker's latest stats snapshot (sent every worker.SNAPSHOT_INTERVAL_S, and
once more after its drain), the sum of the workers that have exited (``retired``: a
worker killed without a final snapshot counts as of its last one, its open connections
as closed), one WorkerRow per live worker, and the replacements per worker slot.
``snapshot`` adds it all up (totals.py) into the WorkersSnapshot that /stats, /metrics
and the ``stopped`` event show. Its ``peak_active`` is exact once the supervisor hands
over the shared limits' peak (``count_peak_with``, before the monitor starts), else the
most of the workers' summed samples (which miss a short peak).

Liveness, for /healthz: when the monitor thread last turned, and for each live worker
when it was last heard and which of its loops had stalled longest then (``stalled``
names the worst one past a limit; a draining worker is not asked).

Threads: the supervisor's monitor thread writes (``started``, ``update``, ``retire``,
``restarted``, ``turned``, ``heard``, ``draining``); any thread reads (``snapshot``,
``pids``, ``restarts_of``, ``stalled``). One lock guards it all; readers get immutable
values.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from server.observe.stats import StatsSnapshot
from server.observe.totals import WorkerRow, WorkersSnapshot, total


class Heartbeat(NamedTuple):
    worker: int  # the slot
    heard_at: float  # monotonic
    loop: str  # its loop stalled longest, as of heard_at
    stalled_s: float
    draining: bool


MONITOR_IDLE_S = 1.0  # the monitor turns at least this often (monitor._timeout)


class WorkerCounts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired = StatsSnapshot()
        self._live: dict[int, StatsSnapshot] = {}  # pid -> latest snapshot
        self._rows: dict[int, WorkerRow] = {}  # pid -> row
        self._restarts: Counter[int] = Counter()  # worker slot -> replacements
        self._peak = 0  # the most connections open at once, summed over workers' samples
        self._exact_peak: Callable[[], int] | None = None  # the shared limits' (exact) one
        self._heartbeats: dict[int, Heartbeat] = {}  # pid -> the latest
        self._monitor_turned_at = time.monotonic()

    def count_peak_with(self, peak: Callable[[], int]) -> None:
        """Take peak_active from ``peak`` (SharedLimits.peak: exact, counted at each
        admission). The supervisor's start, before any reader."""
        self._exact_peak = peak

    # --- the monitor thread -----------------------------------------------------------

    def started(self, index: int, pid: int, generation: int) -> None:
        with self._lock:
            self._rows[pid] = WorkerRow(index, pid, generation, 0, 0, self._restarts[index])
            self._heartbeats[pid] = Heartbeat(index, time.monotonic(), "", 0.0, False)

    def turned(self, now: float) -> None:
        self._monitor_turned_at = now  # one float: no lock needed

    def heard(self, pid: int, now: float, loop: str, stalled_s: float) -> None:
        with self._lock:
            beat = self._heartbeats.get(pid)
            if beat is not None:
                self._heartbeats[pid] = beat._replace(heard_at=now, loop=loop, stalled_s=stalled_s)

    def draining(self, pid: int) -> None:
        with self._lock:
            beat = self._heartbeats.get(pid)
            if beat is not None:
                self._heartbeats[pid] = beat._replace(draining=True)

    def update(self, pid: int, snapshot: StatsSnapshot) -> None:
        with self._lock:
            row = self._rows.get(pid)
            if row is None:
                return
            self._live[pid] = snapshot
            self._rows[pid] = dataclasses.replace(row, active=snapshot.active, accepted=snapshot.accepted)
            self._peak = max(self._peak, sum(s.active for s in self._live.values()))

    def retire(self, pid: int) -> StatsSnapshot:
        """The worker has exited: fold its last snapshot into the retired sum; return it."""
        with self._lock:
            last = self._live.pop(pid, StatsSnapshot())
            self._rows.pop(pid, None)
            self._heartbeats.pop(pid, None)
            self._retired = total([self._retired, dataclasses.replace(last, active=0, peak_active=0)])
            return last

    def restarted(self, index: int) -> None:
        with self._lock:
            self._restarts[index] += 1

    # --- any thread ---------------------------------------------------------------------

    def restarts_of(self, index: int) -> int:
        with self._lock:
            return self._restarts[index]

    def stalled(self, limit_s: float, now: float | None = None) -> str | None:
        """The worst stall past ``limit_s``, named (None: all turn; 0: never asked): the
        monitor thread's own, a worker's loop, or a worker that sent nothing."""
        if limit_s <= 0:
            return None
        now = time.monotonic() if now is None else now
        worst, problem = limit_s, None
        monitor_s = now - self._monitor_turned_at - MONITOR_IDLE_S
        if monitor_s > worst:
            worst, problem = monitor_s, f"the supervisor has not turned for {monitor_s:.1f} s"
        with self._lock:
            beats = [beat for beat in self._heartbeats.values() if not beat.draining]
        for beat in beats:
            silent = now - beat.heard_at
            if beat.stalled_s > worst:
                worst, problem = (
                    beat.stalled_s,
                    f"worker {beat.worker}: {beat.loop} has not turned for {beat.stalled_s:.1f} s",
                )
            if silent > worst:
                worst, problem = silent, f"worker {beat.worker} has sent nothing for {silent:.1f} s"
        return problem

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        with self._lock:
            return list(self._rows)

    def snapshot(self, own: StatsSnapshot) -> WorkersSnapshot:
        """Totals over every worker, past and present, with the supervisor's ``own``
        uptime and log drops; plus one row per live worker."""
        with self._lock:
            totals = total([self._retired, *self._live.values()])
            rows = tuple(sorted(self._rows.values(), key=lambda r: (r.worker, r.generation)))
            restarts = sum(self._restarts.values())
            peak = max(self._peak, totals.active) if self._exact_peak is None else self._exact_peak()
        totals = dataclasses.replace(
            totals,
            peak_active=peak,
            uptime_s=own.uptime_s,
            log_events_dropped=totals.log_events_dropped + own.log_events_dropped,
        )
        return WorkersSnapshot.of(totals, rows, restarts)
