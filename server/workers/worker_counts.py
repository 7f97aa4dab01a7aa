"""WorkerCounts: what the supervisor knows of its workers' counters, for every reader.

Each live worker's latest stats snapshot (sent every worker.SNAPSHOT_INTERVAL_S, and
once more after its drain), the sum of the workers that have exited (``retired``: a
worker killed without a final snapshot counts as of its last one, its open connections
as closed), one WorkerRow per live worker, and the replacements per worker slot.
``snapshot`` adds it all up (totals.py) into the WorkersSnapshot that /stats, /metrics
and the ``stopped`` event show.

Threads: the supervisor's monitor thread writes (``started``, ``update``, ``retire``,
``restarted``); any thread reads (``snapshot``, ``pids``, ``restarts_of``). One lock
guards it all; readers get immutable values.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

from server.observe.stats import StatsSnapshot
from server.observe.totals import WorkerRow, WorkersSnapshot, total


class WorkerCounts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired = StatsSnapshot()
        self._live: dict[int, StatsSnapshot] = {}  # pid -> latest snapshot
        self._rows: dict[int, WorkerRow] = {}  # pid -> row
        self._restarts: Counter[int] = Counter()  # worker slot -> replacements
        self._peak = 0  # the most connections open at once, summed over workers

    # --- the monitor thread -----------------------------------------------------------

    def started(self, index: int, pid: int, generation: int) -> None:
        with self._lock:
            self._rows[pid] = WorkerRow(index, pid, generation, 0, 0, self._restarts[index])

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
            self._retired = total([self._retired, dataclasses.replace(last, active=0, peak_active=0)])
            return last

    def restarted(self, index: int) -> None:
        with self._lock:
            self._restarts[index] += 1

    # --- any thread ---------------------------------------------------------------------

    def restarts_of(self, index: int) -> int:
        with self._lock:
            return self._restarts[index]

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
            peak = max(self._peak, totals.active)
        totals = dataclasses.replace(
            totals,
            peak_active=peak,
            uptime_s=own.uptime_s,
            log_events_dropped=totals.log_events_dropped + own.log_events_dropped,
        )
        return WorkersSnapshot.of(totals, rows, restarts)
