"""The churn scenario's load: short connections at a fixed offered rate, from worker processes.

    result = run(ChurnSpec(host, port, rate=2000, duration_s=3, warmup_s=1, processes=2), on_window)

Each connection connects, sends PAYLOAD_BYTES, reads them back, half-closes, reads the
server's EOF and closes: the load a server behind a balancer's health checks and short
clients sees, ending cleanly (``eof`` in echo-service's log, not ``reset``).

The load is open-loop: worker ``w`` of ``n`` starts its ``k``-th connection at
``load_start + (k * n + w) / rate`` whether or not earlier ones have finished (at most
MAX_IN_FLIGHT at once per worker; an attempt due beyond that is counted ``skipped``), so
a slow server meets the same offered rate as a fast one. Each worker is one process with
one selector, non-blocking sockets. An attempt started more than LATE_S after its time
counts as ``late``: many late attempts mean that the load generator, not the server,
could not keep the rate. ``processes_for`` starts one worker per ONE_PROCESS_RATE: a
worker's own CPU is 55-100 us per connection, so one saturates near 10,000 a second; on
a shared 2-CPU VM, with the server on the other core, one kept 5,000 a second with 2.5%
of them late in a quiet minute (19% in a busy one) and 8,000 with 20-25% late. Workers
share the CPUs the bench pins the load to (on a 2-CPU machine, one core).

The first ``warmup_s`` seconds of load are the warm-up; the measured window follows at
once, at the same rate, and counts the connections that completed within it. ``run``
calls ``on_window("start"/"end")`` at the window's edges from timer threads.
"""

from __future__ import annotations

import errno
import math
import os
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from server.observe.histogram import bucket, percentile

PAYLOAD_BYTES = 16
MAX_IN_FLIGHT = 2000  # per worker process: bounded file descriptors
ATTEMPT_TIMEOUT_S = 5.0
LATE_S = 0.005
STARTUP_S = 0.3  # from submitting the workers to the first connection
ONE_PROCESS_RATE = 5000  # connections a second one worker keeps on time (measured: see above)


@dataclass(frozen=True)
class ChurnSpec:
    host: str
    port: int
    rate: float = 2000.0  # connections offered per second, all workers together
    duration_s: float = 3.0
    warmup_s: float = 1.0
    processes: int = 1


@dataclass
class ChurnResult:
    offered: int = 0  # attempts due within the window
    completed: int = 0  # connections that ended cleanly within the window
    late: int = 0
    skipped: int = 0
    attempts: int = 0  # started, warm-up included
    cpu_s: float = 0.0  # the worker processes' own CPU time over the whole load
    errors: Counter[str] = field(default_factory=Counter)
    histogram: Counter[int] = field(default_factory=Counter)  # connect to close, seconds, bucketed

    def merge(self, other: ChurnResult) -> None:
        self.offered += other.offered
        self.completed += other.completed
        self.late += other.late
        self.skipped += other.skipped
        self.attempts += other.attempts
        self.cpu_s += other.cpu_s
        self.errors.update(other.errors)
        self.histogram.update(other.histogram)

    def latency_ms(self, fraction: float) -> float:
        return round(percentile(self.histogram, fraction) * 1000, 4) if self.histogram else 0.0

    def figures(self, server_cpu_s: float, duration_s: float) -> dict[str, Any]:
        """The churn row's figures, given the server's CPU time over the window."""
        return {
            "offered_per_s": round(self.offered / duration_s, 1),
            "conns_per_s": round(self.completed / duration_s, 1),
            "late_fraction": round(self.late / self.offered, 4) if self.offered else None,
            "p50_ms": self.latency_ms(0.5),
            "p99_ms": self.latency_ms(0.99),
            "cpu_us_per_conn": round(server_cpu_s * 1e6 / self.completed, 2) if self.completed else None,
            "load_cpu_us_per_conn": round(self.cpu_s * 1e6 / self.attempts, 2) if self.attempts else None,
            "server_cpu_util": round(server_cpu_s / duration_s, 3),
            "errors": sum(self.errors.values()) + self.skipped,
            "error_kinds": dict(self.errors) | ({"skipped": self.skipped} if self.skipped else {}),
        }


class _Attempt:
    __slots__ = ("sock", "started", "echoed", "connected", "closing", "done")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.echoed = b""
        self.connected = False
        self.closing = False  # the echo is back and our FIN sent: reading the server's EOF
        self.done = False


def _error_kind(error: OSError) -> str:
    if error.errno in (errno.ECONNREFUSED,):
        return "refused"
    if error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "reset"
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


def drive(spec: ChurnSpec, worker: int, load_start: float) -> ChurnResult:
    """One worker process's share of the load (runs in a worker process)."""
    window_start = load_start + spec.warmup_s
    window_end = window_start + spec.duration_s
    interval = spec.processes / spec.rate
    next_at = load_start + worker / spec.rate
    payload = os.urandom(PAYLOAD_BYTES)
    result = ChurnResult()
    cpu_before = time.process_time()
    selector = selectors.DefaultSelector()
    in_flight: deque[_Attempt] = deque()  # in start order; finished ones leave lazily
    open_count = 0

    def finish(attempt: _Attempt, kind: str | None) -> None:
        nonlocal open_count
        selector.unregister(attempt.sock)
        attempt.sock.close()
        attempt.done = True
        open_count -= 1
        now = time.time()
        if not window_start <= now < window_end:
            return
        if kind is None:
            result.completed += 1
            result.histogram[bucket(now - attempt.started)] += 1
        else:
            result.errors[kind] += 1

    def step(attempt: _Attempt) -> None:
        sock = attempt.sock
        try:
            if not attempt.connected:
                failed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if failed:
                    raise OSError(failed, os.strerror(failed))
                sock.send(payload)  # 16 bytes into an empty send buffer: all of them
                attempt.connected = True
                selector.modify(sock, selectors.EVENT_READ, attempt)
                return
            chunk = sock.recv(4096)
        except OSError as error:
            finish(attempt, _error_kind(error))
            return
        if attempt.closing:
            finish(attempt, "wrong" if chunk else None)  # bytes after the echo, or the EOF
            return
        attempt.echoed += chunk
        if not chunk or not payload.startswith(attempt.echoed):
            finish(attempt, "wrong")
        elif len(attempt.echoed) == len(payload):
            attempt.closing = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as error:  # reset meanwhile
                finish(attempt, _error_kind(error))

    try:
        while True:
            now = time.time()
            while next_at <= now and next_at < window_end:
                if window_start <= next_at:
                    result.offered += 1
                    result.late += now - next_at > LATE_S
                if open_count >= MAX_IN_FLIGHT:
                    result.skipped += window_start <= next_at
                else:
                    sock = socket.socket(socket.AF_INET6 if ":" in spec.host else socket.AF_INET)
                    sock.setblocking(False)
                    attempt = _Attempt(sock, now)
                    in_flight.append(attempt)
                    open_count += 1
                    result.attempts += 1
                    selector.register(sock, selectors.EVENT_WRITE, attempt)
                    code = sock.connect_ex((spec.host, spec.port))
                    if code not in (0, errno.EINPROGRESS):
                        finish(attempt, _error_kind(OSError(code, os.strerror(code))))
                next_at += interval
            while in_flight and (in_flight[0].done or now - in_flight[0].started > ATTEMPT_TIMEOUT_S):
                oldest = in_flight.popleft()
                if not oldest.done:
                    finish(oldest, "unanswered")
            if now >= window_end and not in_flight:
                break
            timeout = max(0.0, next_at - now) if next_at < window_end else 0.05
            for key, _ in selector.select(timeout):
                step(key.data)
    finally:
        for attempt in in_flight:
            attempt.sock.close()
        selector.close()
    result.cpu_s = time.process_time() - cpu_before
    return result


def processes_for(rate: float) -> int:
    """Worker processes for ``rate`` connections a second: one per ONE_PROCESS_RATE."""
    return max(1, math.ceil(rate / ONE_PROCESS_RATE))


def run(spec: ChurnSpec, on_window: Callable[[str], None] | None = None) -> ChurnResult:
    """The whole load: warm-up, then the measured window; the workers' results merged."""
    load_start = time.time() + STARTUP_S
    window_start_in = STARTUP_S + spec.warmup_s
    timers = (
        [
            threading.Timer(window_start_in, on_window, args=("start",)),
            threading.Timer(window_start_in + spec.duration_s, on_window, args=("end",)),
        ]
        if on_window
        else []
    )
    for timer in timers:
        timer.start()
    merged = ChurnResult()
    try:
        with ProcessPoolExecutor(max_workers=spec.processes) as pool:
            futures = [pool.submit(drive, spec, worker, load_start) for worker in range(spec.processes)]
            for future in futures:
                merged.merge(future.result())
        for timer in timers:
            timer.join()
    finally:
        for timer in timers:
            timer.cancel()
    return merged
