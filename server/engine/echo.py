"""The echo task: one connection's life, as a generator run by a Scheduler.

It reads the loop top to bottom like the blocking code it replaces: wait readable,
``recv_into`` the scheduler's buffer, ``send`` it back; if the send was partial, copy
what is owed and wait writable until it drains, reading nothing more meanwhile. So a
client that never reads costs at most one buffer, and then the write-stall deadline.

Per message: one ``recv_into``, one ``send`` of a memoryview slice of the buffer (the
one small allocation, freed at once), two attribute updates. No lock, clock read,
event or log line; a copy only when a send was partial. Bytes are counted on the
Connection; its scheduler folds them into Stats once a second, and the task folds the
rest at close.

A write stall means *no progress* for write_stall_timeout, not "could not flush
everything within it": a slow but steady reader keeps its connection. The kernel only
reports writable once a third of the send buffer is free, which for a slow reader can
take far longer than the timeout; so when the write wait times out, the task asks the
kernel how much it still holds unacknowledged (SIOCOUTQ, Linux) and keeps waiting if
the peer took any of it since the last look. Progress is seen at the peer's window
updates (on loopback, about one per 64 KiB it reads), so a reader slower than one
window update per timeout is a stall; and since each look compares with the one
before, a stall is closed between one and two timeouts after the peer last took
anything. Where the kernel cannot say, a timeout is a stall.

Before the loop, two optional steps (DESIGN: "a preamble step of the connection's
task"): ``proxied_echo`` first reads the PROXY protocol header (``read_proxy_header``:
peek at most what can still be header, take exactly the header's bytes, all within one
deadline; no echo byte is consumed), and settles admission through a ProxyGate; then
``echo`` writes the banner (``greeting``) if any, before echoing. Banner bytes are not
counted in ``bytes_out``.

How it ends (``Connection.reason``):
    eof          the client half-closed; everything it sent was echoed, then FIN
    idle_timeout nothing arrived for idle_timeout
    write_stall  the echo could not be written for write_stall_timeout (closed with RST)
    reset        the peer reset the connection
    shutdown     the server stopped: stop reading, flush what is owed, FIN, close
    error        any other socket error, or a bug in this task (counted in Stats.errors)

Everything here runs on the connection's scheduler thread only.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

from server.engine.proxy_protocol import Accept, ProxyHeader, ProxyProtocolError, examine, parse
from server.engine.scheduler import READ, WRITE, Shutdown, TaskGen, Wait, WaitTimeout, reset_on_close

# After a shutdown FIN, read and drop what the client still sends until it closes, so
# that closing does not turn into an RST that could destroy echo the client has not yet
# read; but once the peer has acknowledged every byte and our FIN (nothing unsent) and
# sends nothing, there is nothing left to protect: close then, checked every
# LINGER_CHECK_S, so a client that never closes does not hold the stop until the
# scheduler's abort deadline (which still bounds a peer that never reads).
LINGER_CHECK_S = 0.05
_LINGER_WAIT = Wait(READ, LINGER_CHECK_S)
_INT = struct.Struct("i")


def unsent_bytes(sock: socket.socket) -> int | None:
    """Bytes the kernel still holds for the peer (not yet acknowledged), or None."""
    try:
        return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(_INT.size)))[0])
    except (OSError, ValueError):
        return None


class Connection:
    """One connection's identity and counters, shared by its task and its scheduler."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "folded_in",
        "folded_out",
        "id",
        "ip",
        "opened_at",
        "peer",
        "reason",
        "via",
    )

    def __init__(self, conn_id: int, peer: str, ip: str, opened_at: float) -> None:
        self.id = conn_id
        self.peer = peer
        self.ip = ip
        self.opened_at = opened_at
        self.bytes_in = 0
        self.bytes_out = 0
        self.folded_in = 0  # bytes already added to Stats by the periodic fold
        self.folded_out = 0
        self.reason = ""
        self.via = ""  # the balancer's address once a PROXY header named the client


@dataclass(frozen=True, slots=True)
class EchoWaits:
    """The Wait objects an echo task yields, made once per server (no per-message allocation)."""

    read: Wait
    write: Wait
    write_wants_read: Wait  # TLS only: a write that needs the peer's bytes first is still a write stall

    @classmethod
    def from_timeouts(cls, idle_timeout: float, write_stall_timeout: float) -> EchoWaits:
        return EchoWaits(Wait(READ, idle_timeout), Wait(WRITE, write_stall_timeout), Wait(READ, write_stall_timeout))


def echo(
    sock: socket.socket,
    conn: Connection,
    buffer: memoryview,
    waits: EchoWaits,
    on_close: Callable[[Connection], None],
    greeting: bytes = b"",
) -> TaskGen:
    """Send ``greeting`` (the banner), then echo until EOF, a deadline, an error or
    shutdown; then report via ``on_close``."""
    recv_into = sock.recv_into
    send = sock.send
    read_wait = waits.read
    try:
        if greeting and not (yield from _greet(sock, greeting, waits, conn)):
            reset_on_close(sock)
            return
        while True:
            try:
                yield read_wait
            except WaitTimeout:
                conn.reason = "idle_timeout"
                return
            except Shutdown:
                conn.reason = "shutdown"
                break
            try:
                received = recv_into(buffer)
            except BlockingIOError:
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                conn.reason = "reset"
                return
            if not received:
                conn.reason = "eof"
                break
            conn.bytes_in += received
            try:
                sent = send(buffer[:received])
            except BlockingIOError:
                sent = 0
            if sent != received:
                # The buffer belongs to the scheduler: keep a copy of what is owed.
                owed = bytes(buffer[sent:received])
                if not (yield from flush(sock, owed, waits, conn)):
                    # Closing with RST makes the kernel drop the echo it still holds.
                    reset_on_close(sock)
                    return
                conn.bytes_out += received
                if conn.reason == "shutdown":  # arrived while flushing: read no more
                    break
            else:
                conn.bytes_out += received
        # Graceful end (EOF or shutdown): nothing is owed here, so say we are done.
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if conn.reason == "shutdown":
            yield from discard_until_eof(sock, buffer)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        conn.reason = "reset"
    except OSError:
        conn.reason = "error"
    except Exception:
        conn.reason = "error"  # a bug: the scheduler logs the traceback
        raise
    finally:
        if not conn.reason:  # closed from outside: the scheduler's abort deadline
            conn.reason = "shutdown"
        on_close(conn)


def flush(sock: socket.socket, owed: bytes, waits: EchoWaits, conn: Connection) -> Generator[Wait, None, bool]:
    """Send ``owed`` in full, waiting writable; False once the peer took nothing for
    write_stall_timeout (see the module docstring). tls_echo's task flushes with it too.

    A Shutdown arriving here changes nothing: what was read is still owed. (The
    scheduler's abort deadline bounds this.) Over TLS (an ssl.SSLSocket) a send that
    wants the socket is retried with the same bytes, as OpenSSL requires; one that
    wants the peer's bytes first waits readable, as a write stall all the same.
    """
    send = sock.send
    wait = waits.write
    view = memoryview(owed)
    held = unsent_bytes(sock)
    while view:
        try:
            yield wait
        except WaitTimeout:
            now_held = unsent_bytes(sock)
            if now_held is not None and held is not None and now_held < held:
                held = now_held  # slow, not stalled: the peer took some
                continue
            conn.reason = "write_stall"
            return False
        except Shutdown:
            conn.reason = "shutdown"
            continue
        try:
            sent = send(view)
        except (BlockingIOError, ssl.SSLWantWriteError):
            wait = waits.write
            continue
        except ssl.SSLWantReadError:
            wait = waits.write_wants_read
            continue
        view = view[sent:]
        wait = waits.write
        held = unsent_bytes(sock)
    return True


def discard_until_eof(sock: socket.socket, buffer: memoryview) -> TaskGen:
    while True:
        try:
            yield _LINGER_WAIT
        except WaitTimeout:
            if unsent_bytes(sock) == 0:
                return  # the peer holds all of its echo and our FIN
            continue
        try:
            if not sock.recv_into(buffer):
                return
        except BlockingIOError:
            continue
        except OSError:
            return


def _greet(sock: socket.socket, greeting: bytes, waits: EchoWaits, conn: Connection) -> Generator[Wait, None, bool]:
    try:
        sent = sock.send(greeting)
    except BlockingIOError:
        sent = 0
    if sent == len(greeting):
        return True
    return (yield from flush(sock, greeting[sent:], waits, conn))


# --- the PROXY protocol preamble ------------------------------------------------------------


class ProxyRejected(Exception):
    """The header failed: ``kind`` is malformed, oversized, truncated or late."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind = kind


class ProxyGate(Protocol):
    """Admission after the header (acceptor.ProxyAdmission); any thread may call it."""

    accept: Accept
    timeout_s: float

    def admit(self, conn: Connection, header: ProxyHeader) -> bool: ...

    def reject(self, conn: Connection, kind: str, problem: str) -> None: ...


def read_proxy_header(
    sock: socket.socket, accept: Accept, timeout_s: float, clock: Callable[[], float] = time.monotonic
) -> Generator[Wait, None, ProxyHeader]:
    """Read exactly one header within ``timeout_s`` (one deadline for all of it, however
    the bytes trickle in); raises ProxyRejected. Never consumes a byte past the header."""
    deadline = clock() + timeout_s
    data = b""
    try:
        while (scan := examine(data, accept)).end is None:
            left = deadline - clock()
            if left <= 0:
                raise ProxyRejected("late", f"no complete header within {timeout_s:g} s")
            try:
                yield Wait(READ, left)
            except WaitTimeout:
                raise ProxyRejected("late", f"no complete header within {timeout_s:g} s") from None
            except Shutdown:
                raise ProxyRejected("late", "the server stopped before the header arrived") from None
            try:
                peeked = sock.recv(scan.room, socket.MSG_PEEK)
                if not peeked:
                    raise ProxyRejected("truncated", f"the connection closed after {len(data)} bytes of the header")
                end = examine(data + peeked, accept).end
                data += sock.recv(len(peeked) if end is None else end - len(data))
            except BlockingIOError:
                continue
            except OSError as error:
                raise ProxyRejected("truncated", f"the connection failed during the header: {error.strerror}") from None
        return parse(data[: scan.end])
    except ProxyProtocolError as error:
        raise ProxyRejected(error.kind, str(error)) from None


def proxied_echo(
    sock: socket.socket,
    conn: Connection,
    buffer: memoryview,
    waits: EchoWaits,
    on_close: Callable[[Connection], None],
    gate: ProxyGate,
    greet: Callable[[Connection], bytes] | None = None,
) -> TaskGen:
    """The header, admission by the header's client address, then ``echo``. A connection
    not admitted is closed (by the scheduler, as the task ends) without ``on_close``:
    it was never admitted, so its place is released by ``gate.reject`` or ``gate.admit``."""
    settled = False
    try:
        header = yield from read_proxy_header(sock, gate.accept, gate.timeout_s)
        settled = True
        if not gate.admit(conn, header):
            return
    except ProxyRejected as rejected:
        settled = True
        gate.reject(conn, rejected.kind, str(rejected))
        return
    finally:
        if not settled:  # closed at the abort deadline, or a bug: still release the place
            gate.reject(conn, "late", "the connection was closed before its header arrived")
    yield from echo(sock, conn, buffer, waits, on_close, greet(conn) if greet is not None else b"")
