"""One scheduler's live connections, read on that scheduler's own thread: the engine side
of ``GET /connections`` (observe/connections.py asks through call_soon_threadsafe).

    collect(loop, deliver)          a task: every connection as a Summary, CHUNK at a time
    rtts(loop, ids)                 the current TCP_INFO rtt of those connections
    describe(loop, conn_id, facts)  ``facts(sock, conn)`` for one connection, or None

``collect`` is the O(connections) one, so it is a task of its own (spawned daemon, so a
stop ends it at once): it copies CHUNK connections' summaries (a tuple each, well under
a microsecond apiece), then lets the scheduler turn once (``Sleep(0)``) so the echo goes
on, and so on; at the end it hands the list to ``deliver``. With 10,000 connections the
echo waits at most one chunk at a time, never for the whole list (docs/reflection.md
has the measurement). ``rtts`` and ``describe`` are single calls on the scheduler's
thread (``call_soon_threadsafe``): one getsockopt per asked connection (a page, at most
1,000), or one connection's facts. Nothing here keeps a reference to a task after it
returns, and nothing does socket I/O but TCP_INFO and the TLS state.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from server.engine import tcp_info
from server.engine.connection import Connection
from server.engine.scheduler import Scheduler
from server.engine.waits import READ, WRITE, Sleep, TaskGen

CHUNK = 500  # connections summarized between two scheduler turns


class Summary(NamedTuple):
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


def collect(loop: Scheduler, deliver: Callable[[list[Summary]], None], chunk: int = CHUNK) -> TaskGen:
    """A task for ``loop``: every connection on it (the tasks whose state is a
    Connection, as they are when their chunk is read), then ``deliver(found)``."""
    tasks = tuple(loop.tasks())
    found: list[Summary] = []
    for start in range(0, len(tasks), chunk):
        if start:
            yield Sleep(0)  # one scheduler turn: the echo goes on
        for task in tasks[start : start + chunk]:
            conn = task.state  # None once the task has ended
            if isinstance(conn, Connection):
                state = _state(task.events) if getattr(conn, "admitted", True) else "admitting"
                listener = getattr(conn, "listener", "tcp")
                found.append(
                    Summary(
                        conn.id,
                        listener,
                        conn.peer,
                        conn.ip,
                        conn.via,
                        conn.opened_at,
                        conn.bytes_in,
                        conn.bytes_out,
                        state,
                    )
                )
    deliver(found)


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
