"""One scheduler's live connections, read on that scheduler's own thread: the engine side
of ``GET /connections`` (observe/connections.py asks through call_soon_threadsafe).

    summaries(loop)                 every connection, as cheap immutable Summaries
    rtts(loop, ids)                 the current TCP_INFO rtt of those connections
    describe(loop, conn_id, facts)  ``facts(sock, conn)`` for one connection, or None

Each function runs as one call on the scheduler's thread, between two task turns: it
reads what the tasks keep (no socket I/O but TCP_INFO, which ``summaries`` does not
read), allocates one small object per connection, and never keeps a reference to a task
past its return. ``summaries`` is the O(connections) one: about a microsecond each
(measured in docs/reflection.md); ``rtts`` is one getsockopt per asked connection (a
page, at most 1,000).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from server.engine import tcp_info
from server.engine.echo import Connection
from server.engine.scheduler import READ, WRITE, Scheduler


@dataclass(frozen=True, slots=True)
class Summary:
    """What /connections lists of one connection (opened_at on the monotonic clock)."""

    conn: int
    listener: str
    peer: str
    ip: str
    via: str
    opened_at: float
    bytes_in: int
    bytes_out: int
    state: str


def _state(events: int) -> str:
    """What the connection's task waits for: the peer's bytes, room to write, or neither."""
    if events & WRITE:
        return "writing"
    if events & READ:
        return "reading"
    return "running"


def summaries(loop: Scheduler) -> list[Summary]:
    """Every connection on ``loop`` (its tasks whose state is a Connection)."""
    found = []
    for task in loop.tasks():
        conn = task.state
        if isinstance(conn, Connection):
            state = _state(task.events) if getattr(conn, "admitted", True) else "admitting"
            found.append(
                Summary(
                    conn.id,
                    getattr(conn, "listener", "tcp"),
                    conn.peer,
                    conn.ip,
                    conn.via,
                    conn.opened_at,
                    conn.bytes_in,
                    conn.bytes_out,
                    state,
                )
            )
    return found


def rtts(loop: Scheduler, ids: Collection[int]) -> dict[int, int | None]:
    """The current smoothed RTT (µs) of each asked connection on ``loop`` (None: unknown)."""
    wanted = set(ids)
    found: dict[int, int | None] = {}
    for task in loop.tasks():
        conn = task.state
        if isinstance(conn, Connection) and conn.id in wanted and task.sock is not None:
            info = tcp_info.read(task.sock)
            found[conn.id] = None if info is None else info.rtt_us
    return found


def describe(
    loop: Scheduler, conn_id: int, facts: Callable[[socket.socket, Connection], dict[str, Any]]
) -> dict[str, Any] | None:
    """``facts(sock, conn)`` for the connection ``conn_id`` if it is on ``loop``, with its
    live counters (age_s, bytes_in, bytes_out, state); else None."""
    for task in loop.tasks():
        conn = task.state
        if isinstance(conn, Connection) and conn.id == conn_id and task.sock is not None:
            counters = {
                "age_s": round(loop.now - conn.opened_at, 3),
                "bytes_in": conn.bytes_in,
                "bytes_out": conn.bytes_out,
                "state": _state(task.events) if getattr(conn, "admitted", True) else "admitting",
            }
            return {**facts(task.sock, conn), **counters}
    return None
