"""A ping-pong load over TLS (or plain TCP, for the row beside it), for make bench's TLS row.

    result = run(("127.0.0.1", 7443), conns=50, size=1024, duration_s=3, use_tls=True)

client.loadgen speaks plain TCP only; this is its small TLS sibling: one process, one
``selectors`` loop, ``conns`` connections with one message of ``size`` bytes in flight
each, every echoed byte compared. Connections are opened (and handshaken) before the
load starts, then ``warmup_s`` of load, then the measured window of ``duration_s``
(``on_window("start"/"end")`` at its edges, on this thread). The server's certificate is
not verified: this measures a server we started ourselves on loopback.

Everything runs on the calling thread.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import ssl
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TlsLoadResult:
    """The figures bench.measure reads (the same names as client.loadgen.BenchResult)."""

    msgs_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0


class _Conn:
    __slots__ = ("received", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()
        self.sent_at = 0.0


def _connect(address: tuple[str, int], context: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        sock = context.wrap_socket(sock)  # handshake, blocking, before the load
    sock.setblocking(False)
    return sock


def run(
    address: tuple[str, int],
    *,
    conns: int,
    size: int,
    duration_s: float,
    use_tls: bool,
    warmup_s: float = 1.0,
    on_window: Callable[[str], None] | None = None,
) -> TlsLoadResult:
    context: ssl.SSLContext | None = None
    if use_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    payload = os.urandom(size)
    errors: dict[str, int] = {}
    selector = selectors.DefaultSelector()
    opened = [_Conn(_connect(address, context)) for _ in range(conns)]
    latencies: list[float] = []
    messages = mismatches = 0
    now = time.perf_counter()
    window_start, window_end = now + warmup_s, now + warmup_s + duration_s
    in_window = False
    try:
        for conn in opened:
            conn.sent_at = time.perf_counter()
            _send_all(conn.sock, payload)
            selector.register(conn.sock, selectors.EVENT_READ, conn)
        while True:
            now = time.perf_counter()
            if not in_window and now >= window_start:
                in_window = True
                if on_window:
                    on_window("start")
            if now >= window_end:
                if on_window:
                    on_window("end")
                break
            for key, _ in selector.select(timeout=0.05):
                conn = key.data
                if not _read_some(conn, size, errors):
                    selector.unregister(conn.sock)
                    continue
                if len(conn.received) < size:
                    continue
                finished = time.perf_counter()
                if bytes(conn.received) != payload:
                    mismatches += 1
                if in_window and finished <= window_end:
                    messages += 1
                    latencies.append(finished - conn.sent_at)
                conn.received.clear()
                conn.sent_at = finished
                try:
                    _send_all(conn.sock, payload)
                except OSError as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    selector.unregister(conn.sock)
    finally:
        selector.close()
        for conn in opened:
            conn.sock.close()
    return TlsLoadResult(
        msgs_per_s=messages / duration_s,
        mb_per_s=messages * size / duration_s / 1e6,
        latency_ms=_percentiles(latencies),
        errors=errors,
        mismatches=mismatches,
    )


def _read_some(conn: _Conn, size: int, errors: dict[str, int]) -> bool:
    """Read what is there (and what TLS holds decrypted); False once the connection failed."""
    sock = conn.sock
    while len(conn.received) < size:
        try:
            chunk = sock.recv(size - len(conn.received))
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError as error:
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            return False
        if not chunk:
            errors["eof"] = errors.get("eof", 0) + 1
            return False
        conn.received += chunk
    return True


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Send a small message whole on a non-blocking socket (it nearly always fits the
    socket buffer at once; if not, wait until the socket is ready, at most a second)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            select.select([sock], [sock], [], 1.0)
            continue
        view = view[sent:]


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}
    ordered = sorted(latencies)
    cuts = statistics.quantiles(ordered, n=1000, method="inclusive") if len(ordered) > 1 else ordered * 999

    def at(permille: int) -> float:
        return round(cuts[permille - 1] * 1000, 4)

    return {"p50": at(500), "p90": at(900), "p99": at(990), "p99.9": at(999), "max": round(ordered[-1] * 1000, 4)}
