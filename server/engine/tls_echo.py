"""The TLS echo task: echo.py's connection life over a non-blocking ``ssl`` socket.

    start_tls_connection(...)   # the TLS acceptor's hand-off: wrap, then spawn tls_echo

The task is written like echo.echo and keeps its rules (one buffer owed at most, idle
and write-stall deadlines, drain, half-close), with TLS in between:

  - handshake first, within ``handshake_timeout`` of the task's start in all (however
    the client trickles it); SSLWantReadError / SSLWantWriteError become Waits. A
    handshake that fails or runs out of time closes the connection with reason
    ``tls_handshake`` (the ``detail`` says why: ``timeout``, ``eof``, or OpenSSL's
    reason such as ``wrong_version_number`` for a plain-TCP client) and is logged as a
    warning at most once a second for all schedulers together, never with a traceback;
  - reading checks ``pending()`` before it waits: the TLS layer may hold decrypted
    bytes while the socket has nothing more to say;
  - SSL_write is all-or-nothing here (no partial-write mode): a send that wants the
    socket keeps a copy of what is owed and retries it whole, as OpenSSL requires;
  - the client's close_notify (or a bare FIN) is the half-close: everything read was
    already echoed, so the server answers with its own close_notify (a non-blocking
    ``unwrap`` that does not wait for the peer's), then FIN;
  - on the server's stop: stop reading, flush what is owed, close_notify, FIN, and drop
    what the client still sends until it closes, as plain TCP does.

Everything here runs on the connection's scheduler thread, except HandshakeFailures,
which any scheduler thread may call (it takes a lock once per failed handshake).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import ClassVar

from server.engine.echo import Connection, EchoWaits, discard_until_eof, flush
from server.engine.scheduler import READ, WRITE, Scheduler, Shutdown, TaskGen, Wait, WaitTimeout, reset_on_close
from server.engine.tls import TlsContext
from server.observe.throttle import Throttle

log = logging.getLogger("echo.tls")

HANDSHAKE_FAILED = "tls_handshake"


class TlsConnection(Connection):
    """A Connection on the TLS listener; ``detail`` says why a handshake failed."""

    __slots__ = ("detail",)
    listener: ClassVar[str] = "tls"

    def __init__(self, conn_id: int, peer: str, ip: str, opened_at: float) -> None:
        super().__init__(conn_id, peer, ip, opened_at)
        self.detail = ""


@dataclass(frozen=True, slots=True)
class TlsWaits(EchoWaits):
    """The Wait objects a TLS echo task yields (echo.py's), and the handshake's time."""

    handshake_timeout: float

    @classmethod
    def for_tls(cls, idle_timeout: float, write_stall_timeout: float, handshake_timeout: float) -> TlsWaits:
        plain = EchoWaits.from_timeouts(idle_timeout, write_stall_timeout)
        return cls(plain.read, plain.write, plain.write_wants_read, handshake_timeout)


class HandshakeFailures:
    """Logs failed handshakes at most once a second, saying how many were held back."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._throttle = Throttle(interval_s)

    def note(self, peer: str, detail: str) -> None:
        with self._lock:
            held_back = self._throttle.allow()
        if held_back is not None:
            log.warning("TLS handshake with %s failed: %s (%d more since last said)", peer, detail, held_back)


def start_tls_connection(
    loop: Scheduler,
    sock: socket.socket,
    conn_id: int,
    peer: str,
    ip: str,
    *,
    tls: TlsContext,
    waits: TlsWaits,
    on_close: Callable[[Connection], None],
    failures: HandshakeFailures,
) -> None:
    """The TLS acceptor's hand-off, on ``loop``'s thread: wrap with the current context
    (so a reload applies to new connections only) and start the task."""
    conn = TlsConnection(conn_id, peer, ip, time.monotonic())
    try:
        tls_sock = tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError:  # the peer is already gone (ENOTCONN and friends)
        sock.close()
        conn.reason = "reset"
        on_close(conn)
        return
    loop.spawn(tls_echo(tls_sock, conn, loop.buffer, waits, on_close, failures), tls_sock, state=conn)


def tls_echo(
    sock: ssl.SSLSocket,
    conn: TlsConnection,
    buffer: memoryview,
    waits: TlsWaits,
    on_close: Callable[[Connection], None],
    failures: HandshakeFailures,
) -> TaskGen:
    """Handshake, then echo until EOF, a deadline, an error or shutdown; then ``on_close``."""
    try:
        if (yield from _handshake(sock, conn, waits)):
            yield from _echo(sock, conn, buffer, waits)
        elif conn.reason == HANDSHAKE_FAILED:
            failures.note(conn.peer, conn.detail)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        conn.reason = "reset"
    except ssl.SSLError as error:  # a protocol error after the handshake (bad record, alert)
        conn.reason = "error"
        conn.detail = _why(error)
    except OSError:
        conn.reason = "error"
    except Exception:
        conn.reason = "error"  # a bug: the scheduler logs the traceback
        raise
    finally:
        if not conn.reason:  # closed from outside: the scheduler's abort deadline
            conn.reason = "shutdown"
        on_close(conn)


def _why(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLEOFError):
        return "eof"
    return (error.reason or type(error).__name__).lower()


def _handshake(sock: ssl.SSLSocket, conn: TlsConnection, waits: TlsWaits) -> Generator[Wait, None, bool]:
    """True once the handshake is done; False with conn.reason set otherwise."""
    deadline = time.monotonic() + waits.handshake_timeout
    while True:
        try:
            sock.do_handshake()
            return True
        except ssl.SSLWantReadError:
            events = READ
        except ssl.SSLWantWriteError:
            events = WRITE
        except ssl.SSLError as error:
            conn.detail = _why(error)
            break
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            conn.detail = "reset"
            break
        except OSError as error:
            conn.detail = (error.strerror or "os error").lower()
            break
        left = deadline - time.monotonic()
        if left <= 0:
            conn.detail = "timeout"
            break
        try:
            yield Wait(events, left)
        except WaitTimeout:
            conn.detail = "timeout"
            break
        except Shutdown:  # nothing read yet, nothing owed
            conn.reason = "shutdown"
            return False
    conn.reason = HANDSHAKE_FAILED
    return False


def _echo(sock: ssl.SSLSocket, conn: TlsConnection, buffer: memoryview, waits: TlsWaits) -> TaskGen:
    recv_into = sock.recv_into
    send = sock.send
    pending = sock.pending
    read_wait = waits.read
    call_again = False  # the TLS layer asked to be called again once writable
    while True:
        if not call_again and not pending():
            try:
                yield read_wait
            except WaitTimeout:
                conn.reason = "idle_timeout"
                return
            except Shutdown:
                conn.reason = "shutdown"
                break
        call_again = False
        try:
            received = recv_into(buffer)
        except ssl.SSLWantReadError:
            continue  # part of a record: wait for the rest
        except ssl.SSLWantWriteError:  # the TLS layer must write first (a key update)
            try:
                yield waits.write
            except WaitTimeout:
                conn.reason = "write_stall"
                reset_on_close(sock)
                return
            except Shutdown:
                conn.reason = "shutdown"
                break
            call_again = True
            continue
        if not received:  # close_notify or FIN: the half-close
            conn.reason = "eof"
            break
        conn.bytes_in += received
        try:
            sent = send(buffer[:received])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        if sent != received:
            owed = bytes(buffer[sent:received])  # the buffer belongs to the scheduler
            if not (yield from flush(sock, owed, waits, conn)):  # echo.py's, SSL_write's retries included
                reset_on_close(sock)
                return
            conn.bytes_out += received
            if conn.reason == "shutdown":  # arrived while flushing: read no more
                break
        else:
            conn.bytes_out += received
    # Graceful end (EOF or shutdown): nothing is owed; say so in TLS, then in TCP.
    yield from _close_notify(sock, waits)
    try:
        sock.shutdown(socket.SHUT_WR)  # drops the TLS layer: reads below are raw
    except OSError:
        return
    if conn.reason == "shutdown":
        yield from discard_until_eof(sock, buffer)  # echo.py's: the TLS layer is gone, reads are raw


def _close_notify(sock: ssl.SSLSocket, waits: TlsWaits) -> Generator[Wait, None, None]:
    """Send our close_notify without waiting for the peer's (ours is a half-close too)."""
    while True:
        try:
            sock.unwrap()
            return
        except ssl.SSLWantReadError:
            return  # ours is out; theirs may come later, or never
        except ssl.SSLWantWriteError:
            try:
                yield waits.write
            except WaitTimeout:
                return
            except Shutdown:
                continue
        except (ssl.SSLError, OSError):
            return  # the TLS layer is past saying goodbye (a bare FIN, an alert): FIN only
