"""SharedLimits: max_connections and max_connections_per_ip across worker processes.

One lock-protected table in shared memory (the seed's Lock + counter, across
processes), created by the supervisor before its first worker and handed to each worker
when it is spawned. Each worker owns one *row*: its count of open connections and its
counts per client-address slot. Admission, under the one lock, sums a column over the
rows and, if both limits allow, adds one to the worker's own row; a close subtracts one.
So a check and the count it guards are one atomic step for the whole server: with
``--max-connections 100 --workers 4`` exactly 100 are admitted, whichever worker
accepts them. The table is touched twice per connection (admit, release), never per
message.

Client addresses are hashed (CRC-32, the same in every process, unlike ``hash()``)
into IP_SLOTS slots. Two addresses that share a slot share one per-address budget: a
collision can only make the per-address limit *stricter* for them, never looser, and
with IP_SLOTS slots it takes that many distinct busy clients for collisions to be
likely. The total limit is exact whatever the collisions.

A worker that dies leaves its row behind: the supervisor calls ``reclaim(row)`` once
the process has exited, which zeroes the row (its connections died with it) and frees
it for a new worker. Rows are the only thing each process writes, so a worker killed
between two updates cannot corrupt anyone else's counts. A worker killed while holding
the lock would leave it held: ``owner`` (written right after acquiring) lets
``reclaim`` release a lock held by the dead row. Only a kill in the few instructions
between acquiring and writing ``owner`` escapes this; then admission waits LOCK_TIMEOUT_S
and rejects (fail closed, counted as max_connections, and logged) instead of hanging.

With PROXY protocol the client's address comes with the header, after accept:
``reserve`` holds a place under the total first, then ``admit_reserved`` (the
per-address check, by the header's address) or ``unreserve`` settles it, as Stats does
for one process.

Processes and threads: ``admit``, ``reserve``, ``admit_reserved``, ``unreserve`` and
``release`` from any thread of the worker owning ``row`` (the acceptor admits,
schedulers settle and release); ``reclaim``, ``free_rows`` and ``take_row`` in the
supervisor only, on its monitor thread. Nothing here starts a thread.
"""

from __future__ import annotations

import multiprocessing
import zlib
from typing import Any

from server.observe.stats import REJECT_MAX_CONNECTIONS, REJECT_PER_IP

IP_SLOTS = 4096  # per-address slots per row: 16 KiB of shared memory per row
LOCK_TIMEOUT_S = 1.0  # admission gives up (rejects) if the lock stays held this long
_NO_OWNER = -1


def ip_slot(ip: str) -> int:
    """The slot of a client address: the same in every process."""
    return zlib.crc32(ip.encode()) % IP_SLOTS


class SharedLimits:
    """See the module docstring. Picklable into a spawned worker (multiprocessing
    pickles the lock and the shared memory while it starts the process)."""

    def __init__(self, rows: int, context: Any = None) -> None:
        ctx = context or multiprocessing.get_context("spawn")
        self.rows = rows
        self._stride = 1 + IP_SLOTS
        self._lock = ctx.Lock()
        self._owner = ctx.RawValue("i", _NO_OWNER)
        self._table = ctx.RawArray("i", rows * self._stride)
        self._free = list(range(rows))  # supervisor only
        self.row = -1  # set in a worker by bind()

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": self.rows, "lock": self._lock, "owner": self._owner, "table": self._table}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"]
        self._stride = 1 + IP_SLOTS
        self._lock = state["lock"]
        self._owner = state["owner"]
        self._table = state["table"]
        self._free = []
        self.row = -1

    # --- the supervisor -----------------------------------------------------------

    def take_row(self) -> int | None:
        """A free row for a new worker, or None if every row is in use."""
        return self._free.pop(0) if self._free else None

    def free_rows(self) -> int:
        return len(self._free)

    def reclaim(self, row: int) -> int:
        """The worker owning ``row`` has exited: zero its row, free it, and return how
        many connections it still held."""
        locked = self._lock.acquire(timeout=LOCK_TIMEOUT_S)
        if not locked and self._owner.value == row:
            locked = True  # the dead worker held it: it is ours to release now
        try:
            start = row * self._stride
            held = int(self._table[start])
            for i in range(start, start + self._stride):
                self._table[i] = 0
        finally:
            if locked:
                self._owner.value = _NO_OWNER
                self._lock.release()
        if row not in self._free:
            self._free.append(row)
        return held

    def total(self) -> int:
        """Connections open in all workers (any process; a moment's reading)."""
        return int(sum(self._table[0 :: self._stride]))

    # --- a worker -----------------------------------------------------------------

    def bind(self, row: int) -> None:
        """In the worker: the row it owns (given by the supervisor at spawn)."""
        self.row = row

    def admit(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a connection from ``ip`` for this worker if both limits allow it (None),
        else the rejection reason."""
        slot = 1 + ip_slot(ip)
        stride = self._stride
        table = self._table
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return REJECT_MAX_CONNECTIONS
        try:
            self._owner.value = self.row
            if sum(table[0::stride]) >= max_total:
                return REJECT_MAX_CONNECTIONS
            if sum(table[slot::stride]) >= max_per_ip:
                return REJECT_PER_IP
            base = self.row * stride
            table[base] += 1
            table[base + slot] += 1
            return None
        finally:
            self._owner.value = _NO_OWNER
            self._lock.release()

    def reserve(self, max_total: int) -> str | None:
        """PROXY protocol, at accept: hold a place under max_total for a connection whose
        client address is still to come (None), or the rejection reason. Settle it with
        ``admit_reserved`` or ``unreserve``."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return REJECT_MAX_CONNECTIONS
        try:
            self._owner.value = self.row
            if sum(self._table[0 :: self._stride]) >= max_total:
                return REJECT_MAX_CONNECTIONS
            self._table[self.row * self._stride] += 1
            return None
        finally:
            self._owner.value = _NO_OWNER
            self._lock.release()

    def admit_reserved(self, ip: str, max_per_ip: int) -> str | None:
        """The header named client ``ip``: count it (None; release it at close like an
        admitted one), or give the place back and return the rejection reason."""
        slot = 1 + ip_slot(ip)
        base = self.row * self._stride
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return REJECT_PER_IP  # the place stays held until this worker exits (see above)
        try:
            self._owner.value = self.row
            if sum(self._table[slot :: self._stride]) >= max_per_ip:
                self._table[base] -= 1
                return REJECT_PER_IP
            self._table[base + slot] += 1
            return None
        finally:
            self._owner.value = _NO_OWNER
            self._lock.release()

    def unreserve(self) -> None:
        """A reserved connection closed without being admitted (its header failed)."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return
        try:
            self._owner.value = self.row
            self._table[self.row * self._stride] -= 1
        finally:
            self._owner.value = _NO_OWNER
            self._lock.release()

    def release(self, ip: str) -> None:
        """A connection admitted by ``admit`` (in this worker) has closed."""
        base = self.row * self._stride
        slot = base + 1 + ip_slot(ip)
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return  # the lock is lost (see the module docstring); the row is reclaimed at exit
        try:
            self._owner.value = self.row
            self._table[base] -= 1
            self._table[slot] -= 1
        finally:
            self._owner.value = _NO_OWNER
            self._lock.release()
