"""SharedLimits: max_connections, max_connections_per_ip, connection ids and the exact
peak across worker processes.

One table in shared memory, created by the supervisor before its first worker and
handed to each worker when it is spawned. Each worker owns one *row*: its count of open
connections and its counts per client-address slot. Admission, under the admission lock,
sums a column over the rows and, if both limits allow, adds one to the worker's own row;
so a check and the count it guards are one atomic step for the whole server: with
``--max-connections 100 --workers 4`` exactly 100 are admitted, whichever worker accepts
them. The table is touched twice per connection (admit, release), never per message.

The lock cannot be lost. It is a POSIX record lock (``fcntl.lockf``) on a small
anonymous file: the kernel releases it when its holder dies, at whatever instruction.
It is owned per process, so a ``threading.Lock`` orders the worker's own threads in
front of it. Only an increment needs the lock (a check and its count must be one step);
a decrement (``release``, ``unreserve``) only ever makes the others' sums smaller, so it
takes the worker's thread lock alone. And no state is left inconsistent by a death:
each process writes only its own row, and a dead worker's row, whatever half-update it
holds, is zeroed by ``reclaim`` once the supervisor has reaped it (its connections died
with it). Until then its counts only make admission stricter.

Never waiting: the lock is tried without blocking, a few times (yielding the CPU) for at
most CONTENDED_S, as its holder keeps it for a few microseconds of arithmetic. If it
stays held (its holder was preempted on a busy machine, or is stopped or frozen: the
supervisor replaces such a worker after ``--worker-timeout``), the method returns BUSY
and counts it in ``contended``: the caller decides (the acceptor yields to its scheduler
and tries again for a while, see acceptor.py; worker.GlobalStats).

Client addresses are hashed (CRC-32, the same in every process, unlike ``hash()``)
into IP_SLOTS slots. Two addresses that share a slot share one per-address budget: a
collision can only make the per-address limit *stricter* for them, never looser. The
total limit is exact whatever the collisions.

Connection ids and the peak come with admission, under the lock it already holds: each
admission takes the next id of one server-wide counter (so ids are unique per server
run, across workers, restarts and reloads, and ascend in admission order), and raises
the server-wide peak if the new total passes it (so ``peak_active`` is exact, not a
sample). ``next_id`` hands out the ids this worker's admissions took, in order.

With PROXY protocol the client's address comes with the header, after accept:
``reserve`` holds a place under the total first, then ``admit_reserved`` (the
per-address check, by the header's address) or ``unreserve`` settles it, as Stats does
for one process.

Processes and threads: ``admit``, ``reserve``, ``admit_reserved``, ``unreserve``,
``release`` and ``next_id`` from any thread of the worker owning ``row``; ``reclaim``,
``free_rows`` and ``take_row`` in the supervisor only, on its monitor thread; ``total``
and ``peak`` anywhere. Nothing here starts a thread; the supervisor never takes the lock.
"""

from __future__ import annotations

import collections
import fcntl
import multiprocessing
import os
import tempfile
import threading
import time
import zlib
from multiprocessing import reduction
from multiprocessing.context import get_spawning_popen
from typing import Any

from server.observe.stats import ADMISSION_BUSY, REJECT_MAX_CONNECTIONS, REJECT_PER_IP

IP_SLOTS = 4096  # per-address slots per row: 16 KiB of shared memory per row
CONTENDED_S = 0.002  # how long a method retries a held lock before it returns BUSY
BUSY = ADMISSION_BUSY  # the lock stayed held (its holder was preempted, stopped or frozen)
_NEXT_ID, _PEAK = 0, 1  # cells of the server-wide counters
_IDS_KEPT = 64  # ids admitted and not yet asked for, at most (next_id follows at once)


def ip_slot(ip: str) -> int:
    """The slot of a client address: the same in every process."""
    return zlib.crc32(ip.encode()) % IP_SLOTS


class SharedLimits:
    """See the module docstring. Picklable into a spawned worker (multiprocessing
    passes the lock file and the shared memory while it starts the process)."""

    def __init__(self, rows: int, context: Any = None) -> None:
        ctx = context or multiprocessing.get_context("spawn")
        self.rows = rows
        self._stride = 1 + IP_SLOTS
        with tempfile.TemporaryFile(prefix="echo-admission-") as lock_file:
            self._lock_fd = os.dup(lock_file.fileno())  # the file lives as long as an fd does
        self._table = ctx.RawArray("i", rows * self._stride)
        self._counters = ctx.RawArray("q", 2)  # next connection id, peak
        self._counters[_NEXT_ID] = 1
        self._free = list(range(rows))  # supervisor only
        self._init_process_state()

    def _init_process_state(self) -> None:
        self.row = -1  # set in a worker by bind()
        self._thread_lock = threading.Lock()
        # Ids taken by admissions, for next_id; bounded in case no caller asks for them.
        self._ids: collections.deque[int] = collections.deque(maxlen=_IDS_KEPT)
        self.contended = 0  # BUSY answers in this process

    def __getstate__(self) -> dict[str, Any]:
        # While spawning, the lock file travels as a new descriptor (as a RawArray's
        # memory does); in-process (tests) the view shares this one.
        fd: Any = reduction.DupFd(self._lock_fd) if get_spawning_popen() is not None else self._lock_fd
        return {"rows": self.rows, "lock_fd": fd, "table": self._table, "counters": self._counters}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"]
        self._stride = 1 + IP_SLOTS
        fd = state["lock_fd"]
        self._lock_fd = fd if isinstance(fd, int) else fd.detach()
        self._table = state["table"]
        self._counters = state["counters"]
        self._free = []
        self._init_process_state()

    # --- the supervisor -----------------------------------------------------------

    def take_row(self) -> int | None:
        """A free row for a new worker, or None if every row is in use."""
        return self._free.pop(0) if self._free else None

    def free_rows(self) -> int:
        return len(self._free)

    def reclaim(self, row: int) -> int:
        """The worker owning ``row`` has exited: zero its row, free it, and return how
        many connections it still held. No lock: nobody else writes that row, and
        zeroing it only makes the others' sums smaller."""
        start = row * self._stride
        held = int(self._table[start])
        for i in range(start, start + self._stride):
            self._table[i] = 0
        if row not in self._free:
            self._free.append(row)
        return held

    def total(self) -> int:
        """Connections open in all workers (any process; a moment's reading)."""
        return int(sum(self._table[0 :: self._stride]))

    def peak(self) -> int:
        """The most connections open at once in the whole server, so far (exact)."""
        return int(self._counters[_PEAK])

    def close(self) -> None:
        """This process is done with the table (its lock file descriptor closes)."""
        try:
            os.close(self._lock_fd)
        except OSError:
            pass

    # --- a worker -----------------------------------------------------------------

    def bind(self, row: int) -> None:
        """In the worker: the row it owns (given by the supervisor at spawn)."""
        self.row = row

    def next_id(self) -> int:
        """The id of the connection this worker admitted (or reserved) first among
        those not yet given one. Unique per server run, whatever the worker."""
        try:
            return self._ids.popleft()
        except IndexError:  # not taken by an admission (a caller's own use): take one
            if not self._lock():
                raise RuntimeError("the admission lock stayed held") from None
            try:
                return self._take_id()
            finally:
                self._unlock()

    def admit(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a connection from ``ip`` for this worker if both limits allow it (None),
        else the rejection reason (or BUSY)."""
        slot = 1 + ip_slot(ip)
        stride = self._stride
        table = self._table
        if not self._lock():
            return BUSY
        try:
            now_open = sum(table[0::stride])
            if now_open >= max_total:
                return REJECT_MAX_CONNECTIONS
            if sum(table[slot::stride]) >= max_per_ip:
                return REJECT_PER_IP
            base = self.row * stride
            table[base] += 1
            table[base + slot] += 1
            self._opened(now_open + 1)
            return None
        finally:
            self._unlock()

    def reserve(self, max_total: int) -> str | None:
        """PROXY protocol, at accept: hold a place under max_total for a connection whose
        client address is still to come (None), or the rejection reason (or BUSY).
        Settle it with ``admit_reserved`` or ``unreserve``."""
        if not self._lock():
            return BUSY
        try:
            now_open = sum(self._table[0 :: self._stride])
            if now_open >= max_total:
                return REJECT_MAX_CONNECTIONS
            self._table[self.row * self._stride] += 1
            self._opened(now_open + 1)
            return None
        finally:
            self._unlock()

    def admit_reserved(self, ip: str, max_per_ip: int) -> str | None:
        """The header named client ``ip``: count it (None; release it at close like an
        admitted one), or give the place back and return the rejection reason (or BUSY:
        then the place is still held; the caller retries or calls ``unreserve``)."""
        slot = 1 + ip_slot(ip)
        base = self.row * self._stride
        if not self._lock():
            return BUSY
        try:
            if sum(self._table[slot :: self._stride]) >= max_per_ip:
                self._table[base] -= 1
                return REJECT_PER_IP
            self._table[base + slot] += 1
            return None
        finally:
            self._unlock()

    def unreserve(self) -> None:
        """A reserved connection closed without being admitted (its header failed)."""
        with self._thread_lock:  # a decrement of our own row: no cross-process lock
            self._table[self.row * self._stride] -= 1

    def release(self, ip: str) -> None:
        """A connection admitted by ``admit`` (in this worker) has closed."""
        base = self.row * self._stride
        with self._thread_lock:  # as unreserve
            self._table[base] -= 1
            self._table[base + 1 + ip_slot(ip)] -= 1

    # --- under the lock ---------------------------------------------------------------

    def _opened(self, now_open: int) -> None:
        counters = self._counters
        if now_open > counters[_PEAK]:
            counters[_PEAK] = now_open
        self._ids.append(self._take_id())

    def _take_id(self) -> int:
        counters = self._counters
        conn_id = int(counters[_NEXT_ID])
        counters[_NEXT_ID] = conn_id + 1
        return conn_id

    def _lock(self) -> bool:
        """Take this process's thread lock, then the cross-process lock, without
        blocking; retry for at most CONTENDED_S. False (counted): still held."""
        deadline = 0.0
        while True:
            if self._thread_lock.acquire(blocking=False):
                try:
                    fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except OSError:  # EAGAIN/EACCES: another process holds it
                    self._thread_lock.release()
            now = time.monotonic()
            if not deadline:
                deadline = now + CONTENDED_S
            elif now >= deadline:
                self.contended += 1
                return False
            os.sched_yield()

    def _unlock(self) -> None:
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()
