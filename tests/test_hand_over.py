"""A reload's old generation leaves the shared listener's queued connections to the new
one (Acceptor ``takes_backlog``); a full stop takes them into its drain.

Real sockets, no worker processes: the acceptor's task is driven by hand (the stop
closes it, as its scheduler's stop does), on a duplicate of the listener (as a worker's
inherited copy is), so a connection is queued while nobody accepts and the stop decides.
"""

from __future__ import annotations

import itertools
import socket

import pytest

from server.engine.acceptor import Acceptor
from server.engine.scheduler import Scheduler
from server.observe.stats import Stats


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
