"""The load generator behind ``echo-client bench``: closed-loop echo load from worker
processes on a ProcessPoolExecutor, every echoed byte verified.

Each worker process (``drive``) opens its share of the connections (client.dial: the
PROXY header, TLS and the banner line as the spec's DialOptions say), non-blocking on one
selector, keeps ``pipeline`` messages of ``size`` bytes in flight on each, and measures
from a common start time for ``duration`` seconds. A message's latency runs from when it
was queued for sending until its last byte came back. Latencies go into a log-bucketed
histogram (about 2% resolution) so a worker returns kilobytes, not millions of floats.
At the end each connection is half-closed and read until the server's EOF before it is
closed (``_wind_down``), so a clean run ends as ``eof`` in the server's logs, not ``reset``.
Over TLS (``--tls``) the same loop runs on SSL sockets: a want-read/want-write is "not
yet", a write that wanted the socket is retried with the same bytes first (OpenSSL's
rule), bytes the TLS layer already decrypted are read without waiting for the selector,
and the end is "read all that is owed, then close_notify" (TLS has no half-close).

``run`` is called in the parent: it opens the idle connections (if any), submits the
workers, reports progress through ``add_done_callback``, and merges their results.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field
from typing import Any

from client.dial import PLAIN, DialOptions, open_stream
from client.errors import EchoError
from server.observe.histogram import bucket, percentile

SETUP_S_PER_CONNECTION = 0.0005
STARVED_S = 1.0  # a message in flight longer than this at the end counts as an error
_NOT_YET = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    conns: int = 50
    size: int = 1024
    duration_s: float = 5.0
    pipeline: int = 1
    processes: int = 1
    idle: int = 0
    connect_timeout_s: float = 5.0
    dial: DialOptions = PLAIN


@dataclass
class WorkerResult:
    messages: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    connected: int = 0
    mismatches: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    histogram: Counter[int] = field(default_factory=Counter)
    max_latency_s: float = 0.0


@dataclass
class BenchResult:
    spec: LoadSpec
    messages: int
    msgs_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    mismatches: int
    connected: int
    idle_open_at_end: int | None

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["spec"] = asdict(self.spec)
        return document


class _Conn:
    __slots__ = ("sock", "received", "sent_at", "outbox")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0  # bytes of echo so far: its position in the repeating payload
        self.sent_at: deque[float] = deque()  # queue time of each message in flight
        self.outbox = b""  # what a partial send left over


def drive(spec: LoadSpec, conns: int, start_at: float, seed: int) -> WorkerResult:
    """One worker process: run ``conns`` connections; see the module docstring."""
    result = WorkerResult()
    payload = random.Random(seed).randbytes(spec.size)
    selector = selectors.DefaultSelector()
    buffer = bytearray(max(256 * 1024, spec.size))
    view = memoryview(buffer)
    live: list[_Conn] = []
    for _ in range(conns):
        try:
            sock = open_stream(spec.host, spec.port, spec.dial, spec.connect_timeout_s).sock
        except EchoError as error:
            result.errors[f"connect: {error}"] += 1
            continue
        sock.setblocking(False)
        live.append(_Conn(sock))
    result.connected = len(live)
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)  # the workers start measuring together
    started = time.perf_counter()
    deadline = started + spec.duration_s

    def fail(conn: _Conn, reason: str) -> None:
        result.errors[reason] += 1
        selector.unregister(conn.sock)
        conn.sock.close()

    size = spec.size

    def verify(conn: _Conn, count: int) -> None:
        """Check ``count`` new bytes of echo in ``buffer``: the stream is the payload
        repeated. Compare as bytes: a memoryview comparison goes element by element,
        ~50x slower than memcmp."""
        offset = conn.received % size
        done = 0
        while done < count:
            step = min(count - done, size - offset)
            if view[done : done + step].tobytes() != payload[offset : offset + step]:
                result.mismatches += 1
            done += step
            offset = 0
        conn.received += count

    def queue_message(conn: _Conn, now: float) -> bool:
        conn.sent_at.append(now)
        data = conn.outbox + payload if conn.outbox else payload
        try:
            sent = conn.sock.send(data)
        except _NOT_YET:
            sent = 0
        except OSError as error:
            fail(conn, f"send: {error.strerror or error}")
            return False
        conn.outbox = data[sent:]
        if conn.outbox:
            selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        return True

    now = time.perf_counter()
    for conn in live:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        for _ in range(spec.pipeline):
            if not queue_message(conn, now):
                break
    decrypted: list[_Conn] = []  # TLS connections holding bytes the selector cannot see
    while True:
        events = {key.data: mask for key, mask in selector.select(0 if decrypted else deadline - time.perf_counter())}
        for conn in decrypted:
            events[conn] = events.get(conn, 0) | selectors.EVENT_READ
        decrypted = []
        now = time.perf_counter()
        if now >= deadline:
            break
        for conn, mask in events.items():
            if mask & selectors.EVENT_WRITE and conn.outbox:
                try:
                    sent = conn.sock.send(conn.outbox)
                except _NOT_YET:
                    sent = 0
                except OSError as error:
                    fail(conn, f"send: {error.strerror or error}")
                    continue
                conn.outbox = conn.outbox[sent:]
                if not conn.outbox:
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
            if not mask & selectors.EVENT_READ:
                continue
            count = _receive(conn, buffer, fail)
            if count is None:
                continue
            if not count:
                fail(conn, "closed by server")
                continue
            before = conn.received // size
            verify(conn, count)
            result.bytes += count
            for _ in range(conn.received // size - before):
                latency = now - conn.sent_at.popleft()
                result.histogram[bucket(latency)] += 1
                if latency > result.max_latency_s:
                    result.max_latency_s = latency
                result.messages += 1
                if not queue_message(conn, now):
                    break
            if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.fileno() >= 0 and conn.sock.pending():
                decrypted.append(conn)
    result.elapsed_s = time.perf_counter() - started
    for key in list(selector.get_map().values()):
        conn = key.data
        if conn.sent_at and now - conn.sent_at[0] > STARVED_S:
            result.errors[f"no echo for {STARVED_S:g} s"] += 1  # a server that left it unserved
    _wind_down(selector, buffer, spec.connect_timeout_s, verify, fail, size)
    selector.close()
    return result


def _receive(conn: _Conn, buffer: bytearray, fail: Callable[[_Conn, str], None]) -> int | None:
    """Bytes read into ``buffer`` (0 at EOF); None if none were ready or the read
    failed (reported through ``fail``, which closes the connection)."""
    try:
        return conn.sock.recv_into(buffer)
    except _NOT_YET:
        return None
    except ssl.SSLZeroReturnError:
        return 0
    except OSError as error:
        fail(conn, f"recv: {error.strerror or error}")
        return None


def _wind_down(
    selector: selectors.BaseSelector,
    buffer: bytearray,
    timeout_s: float,
    verify: Callable[[_Conn, int], None],
    fail: Callable[[_Conn, str], None],
    size: int,
) -> None:
    """End every connection as a well-behaved client does: half-close (FIN: no more
    messages), read the echo still in flight until the server's EOF, then close.
    Closing with echo unread in the receive buffer makes the kernel send RST instead
    of FIN, and the server would count a clean run as resets."""
    for key in list(selector.get_map().values()):
        conn = key.data
        if isinstance(conn.sock, ssl.SSLSocket):
            _end_tls(selector, conn, buffer, timeout_s, verify, fail, size)
            continue
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            fail(conn, f"half-close: {error.strerror or error}")
            continue
        selector.modify(conn.sock, selectors.EVENT_READ, conn)
    deadline = time.perf_counter() + timeout_s
    while selector.get_map():
        left = deadline - time.perf_counter()
        if left <= 0:
            for key in list(selector.get_map().values()):
                fail(key.data, f"no EOF from the server within {timeout_s:g} s of the end")
            return
        for key, _ in selector.select(left):
            conn = key.data
            count = _receive(conn, buffer, fail)
            if count is None:
                continue
            if count:
                verify(conn, count)  # late echo is checked too, but timed no more
            else:
                selector.unregister(conn.sock)
                conn.sock.close()


def _end_tls(
    selector: selectors.BaseSelector,
    conn: _Conn,
    buffer: bytearray,
    timeout_s: float,
    verify: Callable[[_Conn, int], None],
    fail: Callable[[_Conn, str], None],
    size: int,
) -> None:
    """TLS cannot half-close: send what a write left over, read exactly the echo still
    owed (the client knows how much), then close_notify and wait for the server's."""
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    try:
        sock.settimeout(timeout_s)
        sock.sendall(conn.outbox)  # the same bytes a write that wanted the socket began
        owed = len(conn.sent_at) * size - conn.received % size
        while owed > 0:
            count = sock.recv_into(buffer, min(owed, len(buffer)))
            if not count:
                raise ConnectionError(0, "the server closed before the echo still owed came back")
            verify(conn, count)
            owed -= count
        sock.unwrap()
    except OSError as error:
        fail(conn, f"ending TLS: {error.strerror or error}")
        return
    selector.unregister(sock)
    sock.close()


def _open_idle(spec: LoadSpec) -> tuple[list[socket.socket], Counter[str]]:
    idle: list[socket.socket] = []
    errors: Counter[str] = Counter()
    for _ in range(spec.idle):
        try:
            idle.append(open_stream(spec.host, spec.port, spec.dial, spec.connect_timeout_s).sock)
        except EchoError as error:
            errors[f"idle connect: {error}"] += 1
    return idle, errors


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data from a silent client's echo server: not expected
    except _NOT_YET:
        return True
    except OSError:
        return False


def run(
    spec: LoadSpec,
    on_progress: Callable[[int, int], None] | None = None,
    on_window: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the benchmark; ``on_progress(done, total)`` as each worker finishes, and
    ``on_window("start"/"end")`` when the measured window opens and closes (the idle
    connections are still open at "end"); both are called on other threads."""
    idle, errors = _open_idle(spec)
    workers = max(1, min(spec.processes, spec.conns))
    shares = [spec.conns // workers + (1 if i < spec.conns % workers else 0) for i in range(workers)]
    start_in = 0.3 + SETUP_S_PER_CONNECTION * max(shares)
    start_at = time.time() + start_in
    merged = WorkerResult(errors=errors)
    timers = (
        [
            threading.Timer(start_in, on_window, args=("start",)),
            threading.Timer(start_in + spec.duration_s, on_window, args=("end",)),
        ]
        if on_window
        else []
    )
    for timer in timers:
        timer.start()
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures: list[Future[WorkerResult]] = [
                pool.submit(drive, spec, share, start_at, os.getpid() + index) for index, share in enumerate(shares)
            ]
            finished = 0

            def done(_: Future[WorkerResult]) -> None:
                nonlocal finished
                finished += 1
                if on_progress:
                    on_progress(finished, len(futures))

            for future in futures:
                future.add_done_callback(done)
            wait_futures(futures)
            for timer in timers:
                timer.join()
            rate = 0.0
            for future in futures:
                part = future.result()
                merged.messages += part.messages
                merged.bytes += part.bytes
                merged.connected += part.connected
                merged.mismatches += part.mismatches
                merged.errors.update(part.errors)
                merged.histogram.update(part.histogram)
                merged.max_latency_s = max(merged.max_latency_s, part.max_latency_s)
                if part.elapsed_s > 0:
                    rate += part.messages / part.elapsed_s
        idle_open = sum(_still_open(sock) for sock in idle) if spec.idle else None
    finally:
        for timer in timers:
            timer.cancel()
        for sock in idle:
            sock.close()
    latency_ms = {
        name: round(percentile(merged.histogram, fraction) * 1000, 4)
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
    }
    latency_ms["max"] = round(merged.max_latency_s * 1000, 4)
    return BenchResult(
        spec=spec,
        messages=merged.messages,
        msgs_per_s=round(rate, 1),
        mb_per_s=round(rate * spec.size / 1e6, 3),  # payload echoed back, one direction
        latency_ms=latency_ms,
        errors=dict(merged.errors),
        mismatches=merged.mismatches,
        connected=merged.connected,
        idle_open_at_end=idle_open,
    )
