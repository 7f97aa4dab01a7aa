"""RelayedPolicy: the supervisor's fault policy under ``--workers N``.

The supervisor holds the one policy (its admin port serves /faults and answers /readyz
and /healthz with its states); the workers draw. So:

- every change is pushed to each live worker (``on_change`` -> Monitor ``faults`` ->
  each worker's control pipe), and each new worker, a replacement or a new generation
  after SIGHUP, starts with ``export()``: the rules, with the states' time left (a reload
  does not restart a ``refuse``);
- each worker reports (``report()``, up its pipe with its stats snapshots) how often each
  rule fired and what it injected; ``snapshot`` sums the reports made for the current
  policy version, and ``injected`` sums every worker's, including those that exited, so
  the counters in /metrics only grow.

``count`` is kept by each worker (the next N connections *that worker* draws); a shared
counter would cost a cross-process lock per connection. The snapshot's ``left`` is the
sum of what the workers have left.

Threads: the admin's handlers (``replace``, ``clear``, ``snapshot``, ``injected``) and
the monitor thread (``note``, ``retire``); a lock guards the reports.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from server.faults.policy import FaultPolicy
from server.faults.rules import STATE_KINDS

Report = tuple[int, list[int], list[int | None], list[tuple[str, str, int]]]


class RelayedPolicy(FaultPolicy):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reports_lock = threading.Lock()
        self._reports: dict[int, Report] = {}  # worker pid -> its latest report
        self._retired: Counter[tuple[str, str]] = Counter()  # injected by workers that exited

    def note(self, pid: int, report: Report) -> None:
        """A worker's report (the monitor thread)."""
        with self._reports_lock:
            self._reports[pid] = report

    def retire(self, pid: int) -> None:
        """A worker exited: keep what it injected (the monitor thread)."""
        with self._reports_lock:
            report = self._reports.pop(pid, None)
            if report is not None:
                for kind, listener, count in report[3]:
                    if kind not in STATE_KINDS:
                        self._retired[(kind, listener)] += count

    def snapshot(self) -> dict[str, Any]:
        own = super().snapshot()
        rules = self.rules()
        with self._reports_lock:
            current = [r for r in self._reports.values() if r[0] == self.version]
        fired: list[int] = []
        left: list[int | None] = []
        for index, rule in enumerate(rules):
            if rule.kind in STATE_KINDS:
                fired.append(own["fired"][index])
                left.append(None)
                continue
            fired.append(sum(r[1][index] for r in current if index < len(r[1])))
            lefts = [r[2][index] for r in current if index < len(r[2])]
            left.append(None if rule.count is None else sum(value or 0 for value in lefts))
        return {**own, "fired": fired, "left": left, "workers_reporting": len(current)}

    def injected(self) -> dict[tuple[str, str], int]:
        counts: Counter[tuple[str, str]] = Counter(
            {key: count for key, count in super().injected().items() if key[0] in STATE_KINDS}
        )
        with self._reports_lock:
            counts.update(self._retired)
            for report in self._reports.values():
                for kind, listener, count in report[3]:
                    if kind not in STATE_KINDS:
                        counts[(kind, listener)] += count
        return dict(counts)
