"""Inbox: how other threads reach a scheduler.

Calls and stop requests wait in one SimpleQueue, in the order they were put, and a
Waker (server/lib/waker.py) makes the scheduler's poll return for them. Any thread may
``put``; only the scheduler's thread ``take``s (after its poll saw ``fileno()``
readable) and ``close``s. A StopRequest in the queue is the scheduler's sentinel: what
follows it still runs, and the scheduler stops on its own terms (scheduler.py).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

from server.lib.waker import Waker

Call = tuple[Callable[..., Any], tuple[Any, ...]]


class StopRequest:
    """Stop: Shutdown into the tasks at ``grace``, reset what is left at ``abort``."""

    __slots__ = ("abort", "grace")

    def __init__(self, grace: float, abort: float) -> None:
        self.grace = grace
        self.abort = abort


class Inbox:
    __slots__ = ("_queue", "_waker", "wake")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Call | StopRequest] = queue.SimpleQueue()
        self._waker = Waker()
        self.wake = self._waker.wake  # any thread: make the poll return

    def fileno(self) -> int:
        return self._waker.fileno()

    def put(self, item: Call | StopRequest) -> None:
        """Any thread."""
        self._queue.put(item)
        self._waker.wake()

    def take(self) -> Iterator[Call | StopRequest]:
        """The scheduler's thread: everything put so far, oldest first."""
        self._waker.drain()
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._waker.close()
