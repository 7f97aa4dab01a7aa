"""A connection's identity and counters, and how every way it can end becomes a close reason.

``Connection`` is shared by the connection's task and its scheduler (the fold, the
``/connections`` view): both run on that scheduler's thread only. ``close_reason`` is the
one mapping from an exception to a close reason, for every step and both transports.

Close reasons (``Connection.reason``, the ``closed`` event's ``reason``):
    eof            the client half-closed; everything it sent was echoed, then FIN
    idle_timeout   nothing arrived for idle_timeout
    write_stall    the echo could not be written for write_stall_timeout (closed with RST)
    reset          the peer reset the connection
    shutdown       the server stopped: stop reading, flush what is owed, FIN, close
    tls_handshake  the TLS handshake failed or ran out of time (``detail`` says why)
    error          any other socket or TLS error (``detail`` for TLS), or a bug in a task
A step may end a connection with any other reason by raising CloseConnection.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from server.engine.waits import Shutdown, WaitTimeout

if TYPE_CHECKING:
    from server.engine.proxy_protocol import ProxyHeader


class Connection:
    """One connection: who, where, since when, bytes each way, and how it ended."""

    __slots__ = (
        "admitted",
        "bytes_in",
        "bytes_out",
        "detail",
        "folded_in",
        "folded_out",
        "id",
        "ip",
        "listener",
        "opened_at",
        "peer",
        "proxy",
        "reason",
        "via",
    )

    def __init__(self, conn_id: int, peer: str, ip: str, opened_at: float, listener: str = "tcp") -> None:
        self.id = conn_id
        self.peer = peer
        self.ip = ip
        self.opened_at = opened_at
        self.listener = listener  # the name of the listener it came in on
        self.admitted = True  # False while a PROXY header is still to settle admission
        self.bytes_in = 0
        self.bytes_out = 0
        self.folded_in = 0  # bytes already added to Stats by the periodic fold
        self.folded_out = 0
        self.reason = ""
        self.detail = ""  # more about the reason (a TLS alert, a handshake timeout)
        self.via = ""  # the balancer's address once a PROXY header named the client
        self.proxy: ProxyHeader | None = None  # that header, kept for reflection (no copy)


class CloseConnection(Exception):
    """Raised by a pipeline step to end its connection with ``reason`` (and ``detail``);
    ``reset``: close with RST rather than FIN."""

    def __init__(self, reason: str, detail: str = "", *, reset: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.reset = reset


def ssl_detail(error: ssl.SSLError) -> str:
    """OpenSSL's short reason (``wrong_version_number``), or ``eof``."""
    if isinstance(error, ssl.SSLEOFError):
        return "eof"
    return (error.reason or type(error).__name__).lower()


def close_reason(error: Exception) -> tuple[str, str] | None:
    """(reason, detail) for an exception that ends a connection; None for a bug."""
    if isinstance(error, CloseConnection):
        return error.reason, error.detail
    if isinstance(error, Shutdown):  # thrown into a step that had nothing to finish
        return "shutdown", ""
    if isinstance(error, WaitTimeout):  # a step's wait ran out (an idle client)
        return "idle_timeout", ""
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", ""
    if isinstance(error, ssl.SSLError):  # a protocol error after the handshake (bad record, alert)
        return "error", ssl_detail(error)
    if isinstance(error, OSError):
        return "error", ""
    return None
