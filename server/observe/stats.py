"""Stats: the server's counters, the one mutable object that threads share.

Every method takes the lock for its whole read-modify-write, so any thread may call
any method. Readers get ``snapshot()``, an immutable copy taken under the lock.

Admission lives here too (``admit``, undone by ``connection_closed``): the total and
per-address counts of open connections are counters like the others, and checking a
limit and counting the connection must be one atomic step under the lock, so that no
two threads admitting at once (the acceptor today, other listeners tomorrow) can both
take the last place.

The admission rule with PROXY protocol on: the client's address is only known once the
header has arrived, so admission has two steps. ``reserve`` at accept checks
max_connections and holds a place (pending: counted against max_connections, not yet in
``accepted`` or ``active``); then exactly one of ``admit_reserved`` (the header named the
client: the per-address check uses the header's address) or ``reject_reserved`` (the
header failed) settles it. A connection rejected at any step is counted once in
``rejected`` and never in ``accepted``. Every admitted connection (``admit`` or
``admit_reserved`` returned None) is passed to ``connection_closed`` exactly once, with the
address it was admitted under. So active == accepted - closed at all times, and
active + pending <= max_connections.

The echo hot path never calls in here: a connection counts its bytes itself and folds
them in at close, and its scheduler folds long connections' bytes in once a second.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Histogram upper bounds (Prometheus "le" labels); +Inf is implicit.
DURATION_BUCKETS_S = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0)
BYTES_BUCKETS = (0, 64, 1024, 16_384, 262_144, 4_194_304, 67_108_864, 1_073_741_824)

REJECT_MAX_CONNECTIONS = "max_connections"
REJECT_PER_IP = "max_connections_per_ip"
REJECT_PROXY_PROTOCOL = "proxy_protocol"
# Not a rejection: with workers, the admission lock is held by another process (admit and
# reserve may answer it; nothing is counted). The caller tries again (acceptor.py).
ADMISSION_BUSY = "busy"

# The listeners every snapshot names (zero where not configured), so that dashboards and
# alerts see the same series whatever the flags; ``add_listener`` names more.
LISTENERS = ("tcp", "tls", "udp")


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative-free bucket counts: counts[i] is for values <= bounds[i]
    (and above bounds[i-1]); the last count is for values above every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    accepted: int = 0
    active: int = 0
    peak_active: int = 0
    closed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    errors: int = 0
    accept_errors: int = 0
    log_events_dropped: int = 0
    rejected: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    timed_out: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    closed_by_reason: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    duration_s: Histogram = Histogram(DURATION_BUCKETS_S, (0,) * (len(DURATION_BUCKETS_S) + 1), 0.0)
    bytes_per_connection: Histogram = Histogram(BYTES_BUCKETS, (0,) * (len(BYTES_BUCKETS) + 1), 0.0)
    uptime_s: float = 0.0
    # listener -> {"accepted", "bytes_received", "bytes_sent"}; UDP's "accepted" is 0.
    listeners: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    udp_datagrams_received: int = 0
    udp_datagrams_sent: int = 0
    udp_dropped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "accepted": self.accepted,
            "active": self.active,
            "peak_active": self.peak_active,
            "closed": self.closed,
            "rejected": dict(self.rejected),
            "timed_out": dict(self.timed_out),
            "closed_by_reason": dict(self.closed_by_reason),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "errors": self.errors,
            "accept_errors": self.accept_errors,
            "log_events_dropped": self.log_events_dropped,
            "uptime_s": round(self.uptime_s, 3),
            "listeners": {name: dict(counts) for name, counts in self.listeners.items()},
            "udp": {
                "datagrams_received": self.udp_datagrams_received,
                "datagrams_sent": self.udp_datagrams_sent,
                "dropped": dict(self.udp_dropped),
            },
        }


# Close reasons that count as timeouts.
TIMEOUT_REASONS = frozenset({"idle_timeout", "write_stall"})


class Stats:
    """Lock-protected counters; see the module docstring for the threading contract."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, listeners: tuple[str, ...] = LISTENERS) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started = self._clock()
        self._accepted = 0
        self._active = 0
        self._peak_active = 0
        self._closed = 0
        self._bytes_received = 0
        self._bytes_sent = 0
        self._errors = 0
        self._accept_errors = 0
        self._log_events_dropped = 0
        self._rejected: Counter[str] = Counter()
        self._closed_by_reason: Counter[str] = Counter()
        self._per_ip: dict[str, int] = {}  # a plain dict: Counter's __missing__ and __delitem__ are Python calls
        self._pending = 0  # places reserved for connections awaiting a PROXY header
        self._duration_counts = [0] * (len(DURATION_BUCKETS_S) + 1)
        self._duration_sum = 0.0
        self._bytes_counts = [0] * (len(BYTES_BUCKETS) + 1)
        self._bytes_sum = 0
        # listener name -> its share of accepted and bytes (the totals are their sums)
        self._listener_counts: dict[str, Counter[str]] = {name: Counter() for name in listeners}
        self._udp_dropped: Counter[str] = Counter()

    def add_listener(self, name: str) -> None:
        """Count a listener by name from now on (EchoServer names each of its listeners)."""
        with self._lock:
            self._listener_counts.setdefault(name, Counter())

    def admit(self, ip: str, max_total: int, max_per_ip: int, listener: str = "tcp") -> str | None:
        """Count a new connection from ``ip`` on ``listener`` if both limits allow it.

        Returns None when admitted, else the rejection reason (already counted).
        An admitted connection must later be passed to ``connection_closed``.
        """
        with self._lock:
            if self._active + self._pending >= max_total:
                self._rejected[REJECT_MAX_CONNECTIONS] += 1
                return REJECT_MAX_CONNECTIONS
            return self._admit_per_ip(ip, max_per_ip, listener)

    def _admit_per_ip(self, ip: str, max_per_ip: int, listener: str) -> str | None:
        """Under the lock: the per-address check, then count the admitted connection."""
        count = self._per_ip.get(ip, 0)
        if count >= max_per_ip:
            self._rejected[REJECT_PER_IP] += 1
            return REJECT_PER_IP
        self._accepted += 1
        self._active += 1
        self._per_ip[ip] = count + 1
        self._listener(listener)["accepted"] += 1
        if self._active > self._peak_active:
            self._peak_active = self._active
        return None

    def reserve(self, max_total: int) -> str | None:
        """Hold a place for a connection whose PROXY header is still to come (None), or
        reject it (the reason, counted). Settle it with admit_reserved or reject_reserved."""
        with self._lock:
            if self._active + self._pending >= max_total:
                self._rejected[REJECT_MAX_CONNECTIONS] += 1
                return REJECT_MAX_CONNECTIONS
            self._pending += 1
            return None

    def admit_reserved(self, ip: str, max_per_ip: int, listener: str = "tcp") -> str | None:
        """The header named client ``ip``: admit (None) or reject (the reason, counted)."""
        with self._lock:
            self._pending -= 1
            return self._admit_per_ip(ip, max_per_ip, listener)

    def reject_reserved(self, reason: str) -> None:
        """A reserved connection closed without being admitted."""
        with self._lock:
            self._pending -= 1
            self._rejected[reason] += 1

    def reject(self, reason: str) -> None:
        """A connection closed at accept for ``reason``, before any reservation."""
        with self._lock:
            self._rejected[reason] += 1

    def pending(self) -> int:
        """Places held by connections awaiting their PROXY header."""
        with self._lock:
            return self._pending

    def add_traffic(self, received: int, sent: int, listener: str = "tcp") -> None:
        """Fold bytes of still-open connections in (called about once a second)."""
        with self._lock:
            self._bytes_received += received
            self._bytes_sent += sent
            self._add_listener_bytes(listener, received, sent)

    def _listener(self, name: str) -> Counter[str]:  # under the lock
        counts = self._listener_counts.get(name)
        if counts is None:  # (setdefault would build a Counter on every call)
            counts = self._listener_counts[name] = Counter()
        return counts

    def _add_listener_bytes(self, listener: str, received: int, sent: int) -> None:  # under the lock
        counts = self._listener(listener)
        counts["bytes_received"] += received
        counts["bytes_sent"] += sent

    def add_udp(self, received: int, sent: int, bytes_in: int, bytes_out: int, dropped: Mapping[str, int]) -> None:
        """Fold the UDP task's counts in (datagrams, bytes, drops by reason)."""
        with self._lock:
            self._bytes_received += bytes_in
            self._bytes_sent += bytes_out
            self._add_listener_bytes("udp", bytes_in, bytes_out)
            counts = self._listener("udp")
            counts["datagrams_received"] += received
            counts["datagrams_sent"] += sent
            self._udp_dropped.update(dropped)

    def connection_closed(
        self, ip: str, reason: str, received: int, sent: int, total_bytes: int, duration_s: float, listener: str = "tcp"
    ) -> None:
        """A connection admitted by ``admit`` ended. ``received``/``sent`` are the bytes
        not yet folded in; ``total_bytes`` is its whole traffic (in + out)."""
        duration_slot = bisect.bisect_left(DURATION_BUCKETS_S, duration_s)
        bytes_slot = bisect.bisect_left(BYTES_BUCKETS, total_bytes)
        with self._lock:
            self._active -= 1
            left = self._per_ip.get(ip, 0) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
            self._closed += 1
            self._closed_by_reason[reason] += 1
            if reason == "error":
                self._errors += 1
            self._bytes_received += received
            self._bytes_sent += sent
            self._add_listener_bytes(listener, received, sent)
            self._duration_counts[duration_slot] += 1
            self._duration_sum += duration_s
            self._bytes_counts[bytes_slot] += 1
            self._bytes_sum += total_bytes

    def accept_failed(self) -> None:
        with self._lock:
            self._accept_errors += 1

    def log_event_dropped(self) -> None:
        with self._lock:
            self._log_events_dropped += 1

    def log_events_dropped_total(self) -> int:
        """The one counter the LogActor checks each time its mailbox runs empty."""
        with self._lock:
            return self._log_events_dropped

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            closed_by_reason = dict(self._closed_by_reason)
            keys = ("accepted", "bytes_received", "bytes_sent")
            listeners = {
                name: MappingProxyType({key: counts.get(key, 0) for key in keys})
                for name, counts in self._listener_counts.items()
            }
            udp = self._listener_counts.get("udp", Counter())
            return StatsSnapshot(
                accepted=self._accepted,
                active=self._active,
                peak_active=self._peak_active,
                closed=self._closed,
                bytes_received=self._bytes_received,
                bytes_sent=self._bytes_sent,
                errors=self._errors,
                accept_errors=self._accept_errors,
                log_events_dropped=self._log_events_dropped,
                rejected=MappingProxyType(dict(self._rejected)),
                timed_out=MappingProxyType({r: n for r, n in closed_by_reason.items() if r in TIMEOUT_REASONS}),
                closed_by_reason=MappingProxyType(closed_by_reason),
                duration_s=Histogram(DURATION_BUCKETS_S, tuple(self._duration_counts), self._duration_sum),
                bytes_per_connection=Histogram(BYTES_BUCKETS, tuple(self._bytes_counts), float(self._bytes_sum)),
                uptime_s=self._clock() - self._started,
                listeners=MappingProxyType(listeners),
                udp_datagrams_received=udp.get("datagrams_received", 0),
                udp_datagrams_sent=udp.get("datagrams_sent", 0),
                udp_dropped=MappingProxyType(dict(self._udp_dropped)),
            )
