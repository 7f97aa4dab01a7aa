"""The open-loop engine of ``echo-client rate``: one process, one thread, one selector.

``drive`` opens its connections, then sends on an *intended schedule* (uniform spacing,
or Poisson arrivals) that nothing the server does can slow down: a send that cannot
leave (a full socket buffer, a stalled server) waits in its connection's queue and
keeps its intended time. The echo stream is matched to sends by position (every message
is the same ``size`` bytes, verified byte by byte), and each echo is timed twice:

- corrected   = last echoed byte arrived - intended send time (what a user waiting on a
                schedule would see, stalls included: no coordinated omission);
- uncorrected = last echoed byte arrived - actual send time (what closed-loop tools show).

Lateness (actual - intended) is recorded for every send, so the client says when it could
not keep its own schedule. Waits use ``select(2)`` (microsecond timeouts) while the
descriptors fit in it: epoll's millisecond timeouts would make every send up to 1 ms late.

Runs in a worker process (or in the caller's process for ``--processes 1``); touches
nothing shared. The result is a RateResult the parent merges.
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass

from client.library import error_kind
from client.rate_result import LATE_S, RateResult

SELECT_FD_LIMIT = 1000  # select(2) takes descriptors below FD_SETSIZE (1024)


@dataclass(frozen=True)
class RateSpec:
    host: str
    port: int
    rate: float  # messages per second, all connections of all processes together
    connections: int
    size: int
    duration_s: float
    warmup_s: float = 0.0
    arrival: str = "uniform"  # or "poisson"
    timeout_s: float = 5.0  # connect timeout, and how long echoes may trail the window
    processes: int = 1


class _Conn:
    __slots__ = ("sock", "unsent", "inflight", "outbox", "echoed", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unsent: deque[float] = deque()  # intended times of messages not begun
        self.inflight: deque[tuple[float, float]] = deque()  # (intended, actual) awaiting echo
        self.outbox = memoryview(b"")  # the rest of a message a partial send left
        self.echoed = 0  # bytes of the current message's echo received so far
        self.writing = False


def drive(spec: RateSpec, connections: int, rate: float, phase: float, start_at: float, seed: int) -> RateResult:
    """Run ``connections`` connections carrying ``rate`` messages/s between them, from
    wall-clock ``start_at``; ``phase`` (0-1) staggers this process's uniform schedule
    against the other processes'."""
    result = RateResult(target_rate=rate, duration_s=spec.duration_s, size=spec.size, connections=connections)
    rng = random.Random(seed)
    payload = rng.randbytes(spec.size)
    conns: list[_Conn] = []
    for _ in range(connections):
        began = time.perf_counter()
        try:
            sock = socket.create_connection((spec.host, spec.port), timeout=spec.timeout_s)
        except OSError as error:
            result.errors[f"connect {error_kind(error)}"] += 1
            continue
        result.connect.record_seconds(time.perf_counter() - began)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns.append(_Conn(sock))
    result.connected = len(conns)
    if not conns:
        return result
    small = max(c.sock.fileno() for c in conns) < SELECT_FD_LIMIT
    selector = selectors.SelectSelector() if small else selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)  # the processes start their schedules together
    try:
        _run(spec, result, selector, conns, rate / len(conns), phase, payload, rng)
    finally:
        for conn in conns:
            conn.sock.close()
        selector.close()
    return result


def _run(
    spec: RateSpec,
    result: RateResult,
    selector: selectors.BaseSelector,
    conns: list[_Conn],
    per_conn_rate: float,
    phase: float,
    payload: bytes,
    rng: random.Random,
) -> None:
    size = spec.size
    start = time.perf_counter()
    window_start = start + spec.warmup_s
    window_end = window_start + spec.duration_s
    poisson = spec.arrival == "poisson"
    interval = 1.0 / per_conn_rate
    schedule: list[tuple[float, int]] = []  # (next intended send, index in conns)
    for index in range(len(conns)):
        first = rng.expovariate(per_conn_rate) if poisson else (index + phase) * interval / len(conns)
        schedule.append((start + first, index))
    heapq.heapify(schedule)
    buffer = bytearray(max(65536, size))
    live = len(conns)

    def fail(conn: _Conn, kind: str) -> None:
        nonlocal live
        result.errors[kind] += 1
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.unsent.clear()
        conn.inflight.clear()
        live -= 1

    def pump(conn: _Conn, now: float) -> None:
        """Write what the connection owes, oldest first, until the kernel takes no more."""
        while conn.outbox or conn.unsent:
            data = conn.outbox if conn.outbox else memoryview(payload)
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                fail(conn, error_kind(error))
                return
            if not sent:
                break
            if not conn.outbox:  # a new message began to leave: now is its actual send time
                intended = conn.unsent.popleft()
                conn.inflight.append((intended, now))
                if intended >= window_start:
                    late = now - intended
                    result.lateness.record_seconds(late)
                    result.late_sends += late > LATE_S
                    result.sent += 1
                    result.sent_in_window += now < window_end
                    result.second(int(now - window_start)).sent += 1
            conn.outbox = data[sent:]
            if conn.outbox:
                break
        want_write = bool(conn.outbox or conn.unsent)
        if want_write != conn.writing:
            conn.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            selector.modify(conn.sock, events, conn)

    def receive(conn: _Conn, now: float) -> None:
        try:
            count = conn.sock.recv_into(buffer)
        except BlockingIOError:
            return
        except OSError as error:
            fail(conn, error_kind(error))
            return
        if not count:
            fail(conn, "eof")
            return
        done = 0
        while done < count:
            step = min(count - done, size - conn.echoed)
            if not conn.inflight or buffer[done : done + step] != payload[conn.echoed : conn.echoed + step]:
                fail(conn, "mismatch")  # a byte we did not send, or more bytes than we sent
                return
            done += step
            conn.echoed += step
            if conn.echoed == size:
                conn.echoed = 0
                intended, actual = conn.inflight.popleft()
                if intended >= window_start:
                    result.received += 1
                    corrected, uncorrected = now - intended, now - actual
                    result.corrected.record_seconds(corrected)
                    result.uncorrected.record_seconds(uncorrected)
                    second = result.second(int(intended - window_start))
                    second.corrected.record_seconds(corrected)
                    second.uncorrected.record_seconds(uncorrected)

    drain_until = window_end + spec.timeout_s
    while live:
        now = time.perf_counter()
        while schedule and schedule[0][0] <= now:
            intended, index = heapq.heappop(schedule)
            conn = conns[index]
            if conn.sock.fileno() < 0:
                continue  # failed: its schedule ends with it
            conn.unsent.append(intended)
            step = rng.expovariate(per_conn_rate) if poisson else interval
            if intended + step < window_end:
                heapq.heappush(schedule, (intended + step, index))
            pump(conn, time.perf_counter())  # the sends before it in this batch took time
        if not schedule:
            if not any(c.inflight or c.unsent for c in conns if c.sock.fileno() >= 0) or now >= drain_until:
                break
            wait = drain_until - now
        else:
            wait = schedule[0][0] - now
        for key, mask in selector.select(max(wait, 0.0)):
            conn = key.data
            now = time.perf_counter()
            if mask & selectors.EVENT_READ:
                receive(conn, now)
            if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                pump(conn, now)
    for conn in conns:
        if conn.sock.fileno() >= 0 and (conn.inflight or conn.unsent):
            result.errors["timeout"] += 1  # echo still owed spec.timeout_s after the window
