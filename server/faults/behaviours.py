"""What a faulted connection does instead of the plain echo loop, on TCP and TLS alike.

    loop = faulted_loop(fault)            # a transport loop: (sock, conn, buffer, waits) -> task
    yield from loop(sock, conn, buffer, waits)

Only connections that drew a Fault run this; every other connection runs the plain
loop (echo.py, tls_echo.py) untouched, so faults off costs the echo path nothing. The
loop here reads a clock and copies each chunk (it may hold it across a Sleep): it is
written for clarity, not speed.

    delay      each echoed chunk (or the first only) is held delay_ms +- jitter_ms
               (uniform, never below 0; from the Fault's seed) before it is sent;
               nothing more is read meanwhile, so the client's sends back up
    bandwidth  the echo is paced by a token bucket: bytes_per_s, in pieces of 20 ms
               worth; up to 250 ms worth of credit makes up for sleeps that overran
    close      after exactly after_bytes echoed bytes, or after_s seconds, whichever
               comes first (neither: at once): FIN; what the client still sends is
               read and dropped until it closes, so the close stays a FIN, not an RST
    reset      the same moments, but RST (SO_LINGER 0, then close)
    hang       no_read: never read (the client's sends fill the windows);
               no_echo: read and drop, never echo. Either way the connection is
               closed idle_timeout after it began (a hung backend does not wake up
               because a client talks to it), with reason ``fault_hang``

Close reasons: ``fault_close``, ``fault_reset``, ``fault_hang`` when the fault ended the
connection; otherwise the plain loop's (``eof``, ``idle_timeout``, ``write_stall``,
``shutdown``). On the server's stop a faulted connection stops reading, sends what it
owes (still paced or delayed: the abort deadline bounds it) and closes as the plain
loop does. Socket errors propagate to the caller, which maps them to a reason.

Everything here runs on the connection's scheduler thread only.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Generator

from server.engine.connection import Connection
from server.engine.echo import discard_until_eof, flush
from server.engine.pipeline import EchoWaits
from server.engine.waits import READ, Shutdown, Sleep, TaskGen, Wait, WaitTimeout, reset_on_close
from server.faults.policy import Fault

BURST_S = 0.02  # bandwidth: bytes go out in pieces of this long's worth (at least one byte)
# and the bucket may hold this long's worth: a sleep that overran (a busy machine) is made
# up for by the next pieces, so the rate holds over time instead of sagging with the load.
CREDIT_S = 0.25
FAULT_CLOSE, FAULT_RESET, FAULT_HANG = "fault_close", "fault_reset", "fault_hang"

Clock = Callable[[], float]


TransportLoop = Callable[[socket.socket, Connection, memoryview, EchoWaits], TaskGen]


def faulted_loop(fault: Fault, clock: Clock = time.monotonic) -> TransportLoop:
    """The transport loop for a connection that drew ``fault``."""

    def loop(sock: socket.socket, conn: Connection, buffer: memoryview, waits: EchoWaits) -> TaskGen:
        if fault.kind == "hang":
            return _hang(sock, conn, buffer, waits, fault.rule.mode == "no_echo", clock)
        return _echo(sock, conn, buffer, waits, fault, clock)

    return loop


def acts_at_accept(fault: Fault) -> bool:
    """Does the fault act before any echo (hang; close or reset with neither after_bytes
    nor after_s)? On a TLS listener those act before the handshake: that is their point."""
    rule = fault.rule
    return rule.kind == "hang" or (
        rule.kind in ("close", "reset") and rule.after_bytes is None and rule.after_s is None
    )


class _Ended(Exception):
    """The fault's moment came (after_bytes or after_s)."""


def _echo(
    sock: socket.socket, conn: Connection, buffer: memoryview, waits: EchoWaits, fault: Fault, clock: Clock
) -> TaskGen:
    rule = fault.rule
    ending = rule.kind in ("close", "reset")
    budget = rule.after_bytes if ending else None
    end_at = clock() + rule.after_s if ending and rule.after_s is not None else None
    if ending and budget is None and end_at is None:
        budget = 0  # neither: at accept
    delays = _Delays(fault) if rule.kind == "delay" else None
    bucket = _Bucket(rule.bytes_per_s, clock()) if rule.kind == "bandwidth" else None
    pending: Callable[[], int] | None = getattr(sock, "pending", None)
    idle = waits.read.timeout
    try:
        while True:
            if budget == 0:
                raise _Ended
            if pending is None or not pending():
                wait = waits.read
                if end_at is not None:
                    left = end_at - clock()
                    if left <= 0:
                        raise _Ended
                    wait = Wait(READ, left if idle is None else min(idle, left))
                try:
                    yield wait
                except WaitTimeout:
                    if end_at is not None and clock() >= end_at:
                        raise _Ended from None
                    conn.reason = "idle_timeout"
                    return
                except Shutdown:
                    conn.reason = "shutdown"
                    break
            try:
                received = sock.recv_into(buffer, len(buffer) if budget is None else min(len(buffer), budget))
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except ssl.SSLWantWriteError:  # a key update: the TLS layer writes first
                try:
                    yield waits.write
                except WaitTimeout:
                    conn.reason = "write_stall"
                    reset_on_close(sock)
                    return
                except Shutdown:
                    conn.reason = "shutdown"
                    break
                continue
            if not received:
                conn.reason = "eof"
                break
            conn.bytes_in += received
            owed = bytes(buffer[:received])  # held across yields: the buffer is the scheduler's
            if delays is not None and (hold := delays.next()) > 0:
                try:
                    yield Sleep(hold)
                except Shutdown:
                    conn.reason = "shutdown"  # what was read is still owed: send it, then stop
            if bucket is not None:
                sent = yield from _paced(sock, owed, waits, conn, bucket, clock)
            else:
                sent = yield from _send(sock, owed, waits, conn)
            if not sent:
                reset_on_close(sock)  # write stall: drop what the kernel still holds
                return
            conn.bytes_out += received
            if budget is not None:
                budget -= received
            if conn.reason == "shutdown":
                break
    except _Ended:
        if rule.kind == "reset":
            reset_on_close(sock)
            conn.reason = FAULT_RESET
            return
        conn.reason = FAULT_CLOSE
    yield from _finish(sock, buffer, waits, linger=conn.reason != "eof", tls=not acts_at_accept(fault))


def _send(sock: socket.socket, data: bytes, waits: EchoWaits, conn: Connection) -> Generator[Wait, None, bool]:
    """Send ``data`` in full: at once if the socket takes it, else echo.flush's way
    (waiting writable, the write-stall rule, SSL_write's retries); False on a stall."""
    try:
        sent = sock.send(data)
    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
        sent = 0
    if sent == len(data):
        return True
    return (yield from flush(sock, data[sent:], waits, conn))


def _finish(sock: socket.socket, buffer: memoryview, waits: EchoWaits, *, linger: bool, tls: bool) -> TaskGen:
    """A graceful end: close_notify over TLS, FIN; then, if the client may still be
    sending (``linger``), drop what it sends until it closes or holds everything
    (echo.discard_until_eof), so that the close stays a FIN and is no RST."""
    if tls and isinstance(sock, ssl.SSLSocket):  # (not before a handshake: there was none)
        from server.engine.tls_echo import _close_notify  # one goodbye for every TLS loop

        yield from _close_notify(sock, waits)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    if linger:
        yield from discard_until_eof(sock, buffer)


def _hang(
    sock: socket.socket, conn: Connection, buffer: memoryview, waits: EchoWaits, read: bool, clock: Clock
) -> TaskGen:
    """Accept and go silent until idle_timeout after the start (see the module docstring)."""
    bound = waits.read.timeout
    end_at = None if bound is None else clock() + bound
    # A hang acts at accept: on a TLS listener, before the handshake, so read beneath
    # the TLS layer (which would otherwise answer the ClientHello).
    raw_recv_into = super(ssl.SSLSocket, sock).recv_into if isinstance(sock, ssl.SSLSocket) else sock.recv_into
    conn.reason = FAULT_HANG
    try:
        if not read:
            if bound is not None:
                yield Sleep(bound)
            return
        while True:
            left = None if end_at is None else end_at - clock()
            if left is not None and left <= 0:
                return
            try:
                yield Wait(READ, left)
            except WaitTimeout:
                return
            try:
                received = raw_recv_into(buffer)
            except BlockingIOError:
                continue
            if not received:
                return  # the client gave up: nothing owed, nothing more to hang on
            conn.bytes_in += received
    except Shutdown:
        conn.reason = "shutdown"


class _Delays:
    """The hold before each echoed chunk: delay_ms +- jitter_ms, seeded per connection."""

    __slots__ = ("_first_only", "_jitter_s", "_mean_s", "_rng", "_used")

    def __init__(self, fault: Fault) -> None:
        self._mean_s = fault.rule.delay_ms / 1000.0
        self._jitter_s = fault.rule.jitter_ms / 1000.0
        self._first_only = fault.rule.first_only
        self._rng = random.Random(fault.seed)
        self._used = False

    def next(self) -> float:
        if self._first_only and self._used:
            return 0.0
        self._used = True
        if not self._jitter_s:
            return self._mean_s
        return max(0.0, self._mean_s + self._rng.uniform(-self._jitter_s, self._jitter_s))


class _Bucket:
    """A token bucket in bytes: ``rate`` a second, at most CREDIT_S's worth held, spent in
    pieces of BURST_S's worth; it starts with one piece."""

    __slots__ = ("capacity", "last", "piece", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.piece = max(1, int(rate * BURST_S))
        self.capacity = max(float(self.piece), rate * CREDIT_S)
        self.tokens = float(self.piece)
        self.last = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now


def _paced(
    sock: socket.socket, owed: bytes, waits: EchoWaits, conn: Connection, bucket: _Bucket, clock: Clock
) -> Generator[Wait | Sleep, None, bool]:
    """Send ``owed`` at the bucket's pace, one burst at a time; False on a write stall."""
    view = memoryview(owed)
    while view:
        piece = min(len(view), bucket.piece)
        bucket.refill(clock())
        if bucket.tokens < piece:
            try:
                yield Sleep((piece - bucket.tokens) / bucket.rate)
            except Shutdown:
                conn.reason = "shutdown"
            bucket.refill(clock())
        bucket.tokens -= piece
        if not (yield from _send(sock, bytes(view[:piece]), waits, conn)):
            return False
        view = view[piece:]
    return True
