"""ConnectionAccounts: how a connection's counters reach Stats and the log.

A connection counts its own bytes (engine/connection.py: ``bytes_in``, ``bytes_out``,
never a lock per message). ``fold`` adds what long connections moved since the last
fold to Stats, once a second, so /metrics moves while they live; ``closed`` adds the
rest when a connection ends and publishes its ``closed`` event (reason, bytes each way,
duration). Both run on the connection's scheduler thread: ``fold`` as a daemon task on
each scheduler, ``closed`` as the listeners' Pipeline ``on_close``. Stats takes its own
lock; ``publish`` is the Exchange's, safe from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from server.engine.connection import Connection
from server.engine.scheduler import Scheduler
from server.observe.events import Event, event
from server.observe.stats import Stats


class ConnectionAccounts:
    def __init__(self, stats: Stats, publish: Callable[[Event], None]) -> None:
        self._stats = stats
        self._publish = publish

    def closed(self, conn: Connection) -> None:
        """An admitted connection ended: the rest of its bytes to Stats, and its event."""
        duration = time.monotonic() - conn.opened_at
        listener = conn.listener
        extra: dict[str, str] = {}
        if listener != "tcp":
            extra["listener"] = listener
        if conn.detail:
            extra["detail"] = conn.detail
        self._stats.connection_closed(
            conn.ip,
            conn.reason,
            conn.bytes_in - conn.folded_in,
            conn.bytes_out - conn.folded_out,
            conn.bytes_in + conn.bytes_out,
            duration,
            listener,
        )
        self._publish(
            event(
                "closed",
                level="warning" if conn.reason == "error" else "info",
                conn_id=conn.id,
                peer=conn.peer,
                **({"via": conn.via} if conn.via else {}),
                reason=conn.reason,
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
                duration_s=round(duration, 6),
                **extra,
            )
        )

    def fold(self, loop: Scheduler) -> None:
        """``loop``'s live connections: what they moved since the last fold, to Stats."""
        traffic: dict[str, list[int]] = {}  # listener -> [received, sent]
        for task in loop.tasks():
            conn = task.state
            if isinstance(conn, Connection):
                counts = traffic.setdefault(conn.listener, [0, 0])
                counts[0] += conn.bytes_in - conn.folded_in
                counts[1] += conn.bytes_out - conn.folded_out
                conn.folded_in = conn.bytes_in
                conn.folded_out = conn.bytes_out
        for listener, (received, sent) in traffic.items():
            if received or sent:
                self._stats.add_traffic(received, sent, listener)
