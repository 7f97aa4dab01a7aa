"""The dashboard's history: the server's own record of the last five minutes, one
sample a second, so that a browser tab opened now shows what happened before it.

    History           a bounded ring of Samples (HISTORY_SAMPLES: five minutes of
                      one-second intervals), each the cumulative counters of one
                      Stats snapshot, in all and per listener
    HistorySampler    a thread that records one Sample every SAMPLE_INTERVAL_S from a
                      snapshot callable (an EchoServer's, or a supervisor's totals)

A Sample holds counters, not rates: a viewer derives each rate from two neighbouring
samples (the difference over their uptimes), so the rates it shows are those of /stats
over the same second, and the integral of a rate chart is exactly what /stats counted.
(Bytes of connections still open reach the counters once a second, when their scheduler
folds them in: a steady stream can show as a slightly jagged line.)

Threads: ``record`` runs on the sampler thread only; ``since`` on admin handler threads
(``wait_for`` on any other); all take one short lock. ``HistorySampler.start``/``stop`` are for the thread that owns
the admin endpoint (its start and close). Nothing here mutates server state, and a
failing snapshot is logged at most once a minute and retried a second later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from server.observe.stats import StatsSnapshot
from server.observe.throttle import Throttle

log = logging.getLogger("echo.history")

SAMPLE_INTERVAL_S = 1.0
HISTORY_SAMPLES = 301  # five minutes of one-second intervals: 300 rates need 301 samples
STOP_TIMEOUT_S = 1.0


class Sample(NamedTuple):
    seq: int
    uptime_s: float
    active: int
    accepted: int
    bytes_received: int
    bytes_sent: int
    rejected: int
    timed_out: int
    # (listener, accepted, bytes_received, bytes_sent) for each listener in the snapshot
    listeners: tuple[tuple[str, int, int, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "t": round(self.uptime_s, 3),
            "active": self.active,
            "accepted": self.accepted,
            "in": self.bytes_received,
            "out": self.bytes_sent,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "listeners": {name: list(counts) for name, *counts in self.listeners},
        }


class History:
    """The last ``size`` samples (see the module docstring for who may call what)."""

    def __init__(self, size: int = HISTORY_SAMPLES) -> None:
        self._lock = threading.Condition()
        self._samples: deque[Sample] = deque(maxlen=size)
        self._seq = 0

    def record(self, snapshot: StatsSnapshot) -> Sample:
        """Append one sample of ``snapshot`` (the sampler thread)."""
        listeners = tuple(
            (name, counts.get("accepted", 0), counts.get("bytes_received", 0), counts.get("bytes_sent", 0))
            for name, counts in snapshot.listeners.items()
        )
        with self._lock:
            self._seq += 1
            sample = Sample(
                self._seq,
                snapshot.uptime_s,
                snapshot.active,
                snapshot.accepted,
                snapshot.bytes_received,
                snapshot.bytes_sent,
                sum(snapshot.rejected.values()),
                sum(snapshot.timed_out.values()),
                listeners,
            )
            self._samples.append(sample)
            self._lock.notify_all()
        return sample

    def wait_for(self, predicate: Callable[[Sample], bool], timeout: float) -> Sample | None:
        """The newest sample once one satisfies ``predicate``; None after ``timeout``
        seconds (any thread but the sampler's: for viewers that wait, as tests do)."""
        with self._lock:
            found = self._lock.wait_for(lambda: self._samples and predicate(self._samples[-1]), timeout)
            return self._samples[-1] if found else None

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The samples after ``seq``, oldest first; all of them for 0, or for a ``seq``
        from the future (another server, a restart)."""
        with self._lock:
            last = self._seq
            kept = list(self._samples)
        if seq > last:
            seq = 0
        return [sample.as_dict() for sample in kept if sample.seq > seq]


class HistorySampler:
    """Records a sample every ``interval_s`` on its own thread until ``stop``."""

    def __init__(
        self, snapshot: Callable[[], StatsSnapshot], history: History, interval_s: float = SAMPLE_INTERVAL_S
    ) -> None:
        self._snapshot = snapshot
        self._history = history
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._failures = Throttle(60.0)
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        due = time.monotonic()
        while True:
            try:
                self._history.record(self._snapshot())
            except Exception:
                if self._failures.allow() is not None:
                    log.exception("history: a stats snapshot failed; the dashboard's history has a gap")
            # On a fixed schedule, so samples stay a second apart; after a stall (a
            # suspended process), start again from now rather than catch up in a burst.
            now = time.monotonic()
            due += self._interval_s
            if due <= now:
                due = now + self._interval_s
            if self._stopped.wait(due - now):
                return
