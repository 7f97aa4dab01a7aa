"""TLS on the pipeline: the wrap at hand-off, the handshake step and the TLS transport loop.

The transport keeps echo.plain_echo's rules (one buffer owed at most, idle and
write-stall deadlines, drain, half-close) with TLS in between:

  - the socket is wrapped at hand-off (``wrapper``, with the context current then, so a
    reload applies to new connections only); a PROXY step may read beneath it first;
  - ``handshake_step``: within ``handshake_timeout`` of its start in all (however the
    client trickles it); SSLWantReadError / SSLWantWriteError become Waits. A handshake
    that fails or runs out of time ends the connection with reason ``tls_handshake`` (the
    ``detail`` says why: ``timeout``, ``eof``, ``reset``, or OpenSSL's reason such as
    ``wrong_version_number`` for a plain-TCP client), logged as a warning at most once a
    second for all schedulers together, never with a traceback;
  - reading checks ``pending()`` before it waits: the TLS layer may hold decrypted bytes
    while the socket has nothing more to say;
  - SSL_write is all-or-nothing here (no partial-write mode): a send that wants the
    socket keeps a copy of what is owed and retries it (echo.flush), as OpenSSL requires;
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
from typing import cast

from server.engine.connection import CloseConnection, Connection, ssl_detail
from server.engine.echo import flush, half_close
from server.engine.pipeline import EchoWaits, Pipeline, Step, ended_by
from server.engine.tls import TlsContext
from server.engine.waits import READ, WRITE, Shutdown, Sleep, TaskGen, Wait, WaitTimeout, reset_on_close
from server.lib import tls_wrap
from server.observe.throttle import Throttle

log = logging.getLogger("echo.tls")

HANDSHAKE_FAILED = "tls_handshake"


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


def wrapper(tls: TlsContext) -> Callable[[socket.socket], socket.socket]:
    """The hand-off's wrap: the accepted socket in the context current at that moment.

    A peer that reset before the wrap: the wrap raises OSError (the caller closes and
    abandons the connection) and leaves no SSLSocket open behind it (lib/tls_wrap.py)."""

    def wrap(sock: socket.socket) -> socket.socket:
        return tls_wrap.wrap(tls.context, sock, server_side=True, do_handshake_on_connect=False)

    return wrap


def handshake_step(timeout_s: float, failures: HandshakeFailures) -> Step:
    """The pipeline step that completes the TLS handshake (see the module docstring)."""

    def handshake(sock: socket.socket, conn: Connection) -> Generator[Wait | Sleep, None, None]:
        detail = yield from _handshake(cast(ssl.SSLSocket, sock), timeout_s)  # wrapped at hand-off
        if detail:
            failures.note(conn.peer, detail)
            raise CloseConnection(HANDSHAKE_FAILED, detail)

    return handshake


def _handshake(sock: ssl.SSLSocket, timeout_s: float) -> Generator[Wait, None, str]:
    """ "" once the handshake is done, else why it failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock.do_handshake()
            return ""
        except ssl.SSLWantReadError:
            events = READ
        except ssl.SSLWantWriteError:
            events = WRITE
        except ssl.SSLError as error:
            return ssl_detail(error)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return "reset"
        except OSError as error:
            return (error.strerror or "os error").lower()
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        try:
            yield Wait(events, left)
        except WaitTimeout:
            return "timeout"
        except Shutdown:  # nothing read yet, nothing owed
            raise CloseConnection("shutdown") from None


def tls_echo(sock: socket.socket, conn: Connection, buffer: memoryview, pipeline: Pipeline) -> TaskGen:
    """The connection's task on a TLS listener: the steps (the handshake among them),
    then echo until EOF, a deadline, an error or shutdown; then ``pipeline.finish``."""
    tls = cast(ssl.SSLSocket, sock)  # wrapped at hand-off (``wrapper``)
    recv_into = tls.recv_into
    send = tls.send
    pending = tls.pending
    waits = pipeline.waits
    read_wait = waits.read
    call_again = False  # the TLS layer asked to be called again once writable
    try:
        for step in pipeline.steps:
            yield from step(sock, conn)
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
                if not (yield from flush(sock, owed, waits, conn)):  # SSL_write's retries included
                    reset_on_close(sock)
                    return
                conn.bytes_out += received
                if conn.reason == "shutdown":  # arrived while flushing: read no more
                    break
            else:
                conn.bytes_out += received
        # Graceful end (EOF or shutdown): nothing is owed; say so in TLS, then in TCP.
        yield from _close_notify(tls, waits)
        yield from half_close(sock, conn, buffer)
    except Exception as error:
        if not ended_by(sock, conn, error):
            raise
    finally:
        pipeline.finish(conn)


def _close_notify(sock: ssl.SSLSocket, waits: EchoWaits) -> Generator[Wait, None, None]:
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
