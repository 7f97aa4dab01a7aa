"""The child of loadtest.wakeups: a Scheduler whose one task waits on a shared listening
socket, accepts what there is and closes it, and counts its wake-ups. Kept apart,
importing only the scheduler, so that a forkserver can preload it."""

from __future__ import annotations

import socket
from typing import Any

from server.engine.scheduler import Scheduler
from server.engine.waits import ACCEPT, READ, TaskGen, Wait


def serve(listener: socket.socket, exclusive: bool, stop: socket.socket, report: Any) -> None:
    """Accept on ``listener`` until ``stop`` is readable; then send (wake-ups, accepted)."""
    loop = Scheduler("accept", buffer_size=0)
    counts = [0, 0]
    listener.setblocking(False)

    def acceptor() -> TaskGen:
        wait = Wait(ACCEPT if exclusive else READ)
        while True:
            yield wait
            counts[0] += 1
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                counts[1] += 1
                conn.close()

    def stopper() -> TaskGen:
        yield Wait(READ)
        loop.request_stop(loop.now, loop.now)

    loop.spawn(acceptor(), listener, daemon=True)
    loop.spawn(stopper(), stop, daemon=True)
    report.send(b"ready")
    loop.run()
    report.send((counts[0], counts[1]))
