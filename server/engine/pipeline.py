"""The connection pipeline: the steps every listener composes before its echo loop.

    accept -> admission (acceptor.py) -> Pipeline.start on a scheduler's thread
      -> [PROXY header] -> [TLS handshake] -> [banner] -> transport loop -> close reason

A listener's Pipeline is built once (server/listeners.py) and shared by its connections.
A **step** is a generator function ``step(sock, conn)`` that yields the scheduler's
Waits on the connection's socket and returns to let the next step run, or raises
CloseConnection (connection.py) to end the connection with a reason. A **transport**
(echo.plain_echo, tls_echo.tls_echo) is the connection's task: it runs the steps with
``yield from``, then its hot loop, and ends through ``ended_by`` and ``finish`` below, so
the exception -> close reason mapping and the close accounting exist once. Steps run
before the loop: a connection without steps pays one empty ``for`` per connection, and
nothing per message.

A TLS listener wraps the accepted socket at hand-off (``wrap``), before any step: the
socket a task is spawned with is the one it keeps, and a PROXY step reads the header
beneath the TLS layer (proxy_step.py), before the handshake step begins.

Admission: with a PROXY step, a connection is only admitted once its header named the
client (``conn.admitted`` turns True in the step); ``finish`` reports only admitted
connections to ``on_close`` (Stats.connection_closed, the ``closed`` event). An
unadmitted one was settled by its gate (acceptor.ProxyAdmission), exactly once.

Threads: ``start``, the steps and the transports run on the connection's scheduler
thread. A Pipeline is immutable; ``on_close`` and the gate are thread-safe.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from server.engine.connection import CloseConnection, Connection, close_reason
from server.engine.scheduler import Scheduler
from server.engine.waits import READ, WRITE, Sleep, TaskGen, Wait, reset_on_close

if TYPE_CHECKING:
    from server.engine.proxy_step import ProxyGate

Step = Callable[[socket.socket, Connection], Generator[Wait | Sleep, None, None]]


class Transport(Protocol):
    def __call__(self, sock: socket.socket, conn: Connection, buffer: memoryview, pipeline: Pipeline) -> TaskGen: ...


# A flush looks for the peer's progress this many times per write-stall timeout, so a
# stall is closed between 1 and 1 + 1/STALL_CHECKS timeouts after the last progress seen.
STALL_CHECKS = 4


@dataclass(frozen=True, slots=True)
class EchoWaits:
    """The Wait objects a connection yields, made once per server (no per-message allocation)."""

    read: Wait
    write: Wait  # the whole write-stall timeout (TLS: a read that must write first)
    write_check: Wait  # a flush's wait: a STALL_CHECKS-th of it (echo.flush counts them)
    write_check_wants_read: Wait  # TLS: a write that needs the peer's bytes first is still a write
    echo: Wait  # as ``read``, with the scheduler's echo step (waits.py): the plain loop's

    @classmethod
    def from_timeouts(cls, idle_timeout: float, write_stall_timeout: float, read_size: int = 65_536) -> EchoWaits:
        check = write_stall_timeout / STALL_CHECKS
        return EchoWaits(
            Wait(READ, idle_timeout),
            Wait(WRITE, write_stall_timeout),
            Wait(WRITE, check),
            Wait(READ, check),
            Wait(READ, idle_timeout, echo=read_size),
        )


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One listener's connection life: its steps, its transport and where it reports."""

    listener: str
    steps: tuple[Step, ...]
    transport: Transport
    waits: EchoWaits
    on_close: Callable[[Connection], None]  # an admitted connection ended (any thread-safe callable)
    wrap: Callable[[socket.socket], socket.socket] | None = None  # TLS: wrap the accepted socket
    gate: ProxyGate | None = None  # set when a step settles admission (PROXY protocol)

    def start(self, loop: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        """The acceptor's hand-off, on ``loop``'s thread: spawn the connection's task."""
        conn = Connection(conn_id, peer, ip, time.monotonic(), self.listener)
        conn.admitted = self.gate is None
        if self.wrap is not None:
            try:
                sock = self.wrap(sock)
            except OSError:  # the peer is already gone (ENOTCONN and friends)
                sock.close()
                self.abandon(conn)
                return
        loop.spawn(self.transport(sock, conn, loop.buffer, self), sock, state=conn)

    def abandon(self, conn: Connection) -> None:
        """The connection is gone before its task could start."""
        conn.reason = "reset"
        if self.gate is not None and not conn.admitted:
            self.gate.reject(conn, "truncated", "the connection failed before its header")
        else:
            self.finish(conn)

    def finish(self, conn: Connection) -> None:
        """The task's last word: report an admitted connection (``on_close``) once."""
        if conn.admitted:
            if not conn.reason:  # closed from outside: the scheduler's abort deadline
                conn.reason = "shutdown"
            self.on_close(conn)


def ended_by(sock: socket.socket, conn: Connection, error: Exception) -> bool:
    """Record why ``error`` ended the connection; False if it is a bug (re-raise it:
    the scheduler logs the traceback, and the reason is ``error``)."""
    mapped = close_reason(error)
    if mapped is None:
        conn.reason = "error"
        return False
    conn.reason, conn.detail = mapped
    if isinstance(error, CloseConnection) and error.reset:
        reset_on_close(sock)
    return True
