"""Waker: how another thread wakes a thread that waits in a poller or selector.

A non-blocking socketpair: the waiting thread registers ``reader`` (or ``fileno()``)
for reading and calls ``drain()`` once it is readable, then looks at whatever queue the
wake-up was about; ``wake()`` may be called from any thread, as often as it likes: a
full pair means a wake-up is already pending, a closed one that the waiter is gone, and
neither is an error. ``close()`` belongs to the waiting thread, once it stops waiting.

The scheduler's inbox, the admin endpoint's requests and the supervisor's commands all
wake their thread this way.
"""

from __future__ import annotations

import socket


class Waker:
    __slots__ = ("reader", "_writer")

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self.reader.fileno()

    def wake(self) -> None:
        """Any thread: make ``reader`` readable (at most one pending wake-up matters)."""
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # full: a wake-up is already pending; closed: the waiter is gone

    def drain(self) -> None:
        """The waiting thread: read the pending wake-ups, so the next wait blocks again."""
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:  # drained
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
