"""A reload's old generation leaves the shared listener's queued connections to the new
one (Acceptor ``takes_backlog``); a full stop takes them into its drain. And an
admission lock held by another process makes the acceptor yield and try again.

Real sockets, no worker processes: the acceptor's task is driven by hand (the stop
closes it, as its scheduler's stop does), on a duplicate of the listener (as a worker's
inherited copy is), so a connection is queued while nobody accepts and the stop decides.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest

from server.engine.acceptor import ADMIT_PATIENCE_S, ADMIT_RETRY_S, Acceptor
from server.engine.scheduler import Scheduler
from server.observe.stats import ADMISSION_BUSY, Stats


@pytest.mark.parametrize("hand_over", [False, True])
def test_a_stopping_acceptor_takes_the_backlog_unless_it_hands_over(hand_over: bool) -> None:
    shared = socket.create_server(("127.0.0.1", 0), backlog=16)
    copy = shared.dup()  # this process's "worker" end; ``shared`` stays, as the supervisor's does
    copy.setblocking(False)
    connections = Scheduler("loop-0", buffer_size=1024)
    started: list[int] = []

    def start(scheduler: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        started.append(conn_id)
        sock.close()

    acceptor = Acceptor(
        copy,
        [connections],
        stats=Stats(),
        publish=lambda record: None,
        max_connections=10,
        max_connections_per_ip=10,
        on_ready=lambda: None,
        next_id=itertools.count(1).__next__,
        takes_backlog=lambda: not hand_over,
    )
    acceptor.start_connection = start
    task = acceptor.run()
    next(task)  # up to its first wait for the listener
    client = socket.create_connection(shared.getsockname()[:2], timeout=5)  # queued: no turn
    try:
        task.close()  # the stop
        copy.close()
        connections.run_once(block=False)  # runs what the acceptor handed over, if anything
        shared.settimeout(0)
        if hand_over:
            assert started == []
            queued, _ = shared.accept()  # still there for the next generation
            queued.close()
        else:
            assert started == [1]
            with pytest.raises(BlockingIOError):
                shared.accept()
    finally:
        client.close()
        shared.close()
        connections.request_stop(connections.now, connections.now)
        connections.run()


class BusyStats(Stats):
    """Stats whose admission lock is held elsewhere for the first ``busy`` tries."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy
        self.tries = 0

    def admit(self, ip: str, max_total: int, max_per_ip: int, listener: str = "tcp") -> str | None:
        self.tries += 1
        if self.tries <= self.busy:
            return ADMISSION_BUSY
        return super().admit(ip, max_total, max_per_ip, listener)


@pytest.mark.parametrize("busy", [3, 10_000])
def test_a_busy_admission_lock_is_tried_again_after_yielding_then_fails_closed(busy: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener.setblocking(False)
    loop = Scheduler("acceptor", buffer_size=0)
    stats = BusyStats(busy)
    started: list[int] = []
    rejected: list[Any] = []

    def start(scheduler: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        started.append(conn_id)
        sock.close()

    acceptor = Acceptor(
        listener,
        [loop],
        stats=stats,
        publish=lambda record: rejected.append(record) if record.name == "rejected" else None,
        max_connections=10,
        max_connections_per_ip=10,
        on_ready=lambda: None,
        next_id=itertools.count(1).__next__,
    )
    acceptor.start_connection = start
    loop.spawn(acceptor.run(), listener, daemon=True, critical=True)
    client = socket.create_connection(listener.getsockname()[:2], timeout=5)
    try:
        while not started and not rejected and stats.tries <= ADMIT_PATIENCE_S / ADMIT_RETRY_S:
            loop.run_once()  # each retry is a Sleep on the scheduler: other tasks run between
        loop.run_once(block=False)  # the hand-off
        if busy == 3:
            assert stats.tries == 4 and started == [1] and stats.snapshot().rejected_total == 0
        else:
            assert started == [] and stats.snapshot().rejected == {"max_connections": 1}
            assert rejected[0].data["detail"] == "admission_busy"
            assert stats.tries == int(ADMIT_PATIENCE_S / ADMIT_RETRY_S) + 2  # first, retries, last
    finally:
        client.close()
        loop.request_stop(loop.now, loop.now)
        loop.run()
