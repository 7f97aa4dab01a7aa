"""The PROXY protocol step: read the header on the raw socket, then settle admission.

The header's bytes are read beneath any TLS layer (the unbound ``socket.socket.recv``
reads the descriptor directly even when the task's socket is an ``ssl.SSLSocket`` whose
handshake has not begun), so a TLS listener behind a balancer that sends PROXY works like
a plain one: the handshake step starts on the first byte after the header.

``read_proxy_header`` peeks at most what can still be header and takes exactly the
header's bytes, all within one deadline; it never consumes a byte past the header.
The step then calls the gate (acceptor.ProxyAdmission): ``admit`` (the per-address check
by the header's client, which becomes the connection's peer) or ``reject``; exactly one
of them, whatever happens, so the place reserved at accept is always released.

Everything here runs on the connection's scheduler thread; the gate is thread-safe.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Generator
from typing import Protocol

from server.engine.connection import CloseConnection, Connection
from server.engine.pipeline import Step
from server.engine.proxy_protocol import Accept, ProxyHeader, ProxyProtocolError, examine, parse
from server.engine.waits import READ, Shutdown, Sleep, Wait, WaitTimeout

_raw_recv = socket.socket.recv  # SSLSocket overrides recv; this reads the descriptor itself


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


def raw_reader(sock: socket.socket) -> Callable[..., bytes]:
    """``recv(size, flags)`` on the descriptor itself, beneath any TLS layer."""
    return functools.partial(_raw_recv, sock)


def read_proxy_header(
    recv: Callable[..., bytes], accept: Accept, timeout_s: float, clock: Callable[[], float] = time.monotonic
) -> Generator[Wait, None, ProxyHeader]:
    """Read exactly one header within ``timeout_s`` (one deadline for all of it, however
    the bytes trickle in) with ``recv(size, flags)`` (``raw_reader``'s); raises
    ProxyRejected. Never consumes a byte past the header."""
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
                peeked = recv(scan.room, socket.MSG_PEEK)
                if not peeked:
                    raise ProxyRejected("truncated", f"the connection closed after {len(data)} bytes of the header")
                end = examine(data + peeked, accept).end
                data += recv(len(peeked) if end is None else end - len(data))
            except BlockingIOError:
                continue
            except OSError as error:
                raise ProxyRejected("truncated", f"the connection failed during the header: {error.strerror}") from None
        return parse(data[: scan.end])
    except ProxyProtocolError as error:
        raise ProxyRejected(error.kind, str(error)) from None


def proxy_step(gate: ProxyGate) -> Step:
    """The step: the header, then admission by the header's client address. A connection
    not admitted ends with reason ``proxy_protocol`` (never reported as closed: it was
    never admitted; the gate counted its rejection)."""

    def read_header(sock: socket.socket, conn: Connection) -> Generator[Wait | Sleep, None, None]:
        settled = False
        try:
            header = yield from read_proxy_header(raw_reader(sock), gate.accept, gate.timeout_s)
            settled = True
            conn.proxy = header  # for reflection: the object is made anyway, keeping it costs nothing
            conn.admitted = gate.admit(conn, header)
            if not conn.admitted:
                raise CloseConnection("proxy_protocol", "not admitted")
        except ProxyRejected as rejected:
            settled = True
            gate.reject(conn, rejected.kind, str(rejected))
            raise CloseConnection("proxy_protocol", rejected.kind) from None
        finally:
            if not settled:  # closed at the abort deadline, or a bug: still release the place
                gate.reject(conn, "late", "the connection was closed before its header arrived")

    return read_header
