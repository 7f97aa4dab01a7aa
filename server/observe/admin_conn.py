"""One admin connection's state, and the Exchange subscriber of an /events reader.

``Conn``: ``phase`` and ``since`` change only under AdminServer's lock (any thread);
``deadline`` and ``wants_watch`` belong to the connection's handler thread; ``watched``
to the admin thread. ``Watcher``: ``send`` from any publishing thread (it never blocks),
``end`` from any thread, ``next_burst`` on the handler thread.
"""

from __future__ import annotations

import json
import queue
import socket
from collections.abc import Callable
from typing import Any, Literal

from server.observe.events import Event

Phase = Literal["waiting", "busy", "stream"]
END = object()  # in a Watcher's queue: the stream is over


class Conn:
    __slots__ = ("sock", "peer", "phase", "since", "deadline", "watcher", "wants_watch", "watched")

    def __init__(self, sock: socket.socket, peer: Any, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.phase: Phase = "waiting"
        self.since = now  # when the current phase began: the oldest is evicted first
        self.deadline = now  # the request deadline, set as the handler starts waiting
        self.watcher: Watcher | None = None
        self.wants_watch = False  # the admin thread watches this stream socket (and closes it)
        self.watched = False


class Watcher:
    """One /events reader: an Exchange subscriber with a bounded queue."""

    def __init__(self, size: int, on_overflow: Callable[[], None]) -> None:
        self.items: queue.Queue[Any] = queue.Queue(size)
        self.overflowed = False
        self._on_overflow = on_overflow

    def send(self, item: Event) -> None:
        try:
            self.items.put_nowait(item)
        except queue.Full:
            if not self.overflowed:
                self.overflowed = True
                self._on_overflow()  # once: ask the admin thread to cut the reader off

    def next_burst(self, gather: Callable[[], object]) -> tuple[bytes, bool]:
        """The next events as JSON lines, and whether the stream ends after them (the
        handler thread). Waits for an event, then calls ``gather`` (a short wait, so that
        a burst is sent as one chunk with one wake-up), then takes what is queued."""
        items = [self.items.get()]
        gather()
        while items[-1] is not END and len(items) < self.items.maxsize:
            try:
                items.append(self.items.get_nowait())
            except queue.Empty:
                break
        lines = b"".join(
            json.dumps(item.as_dict(), separators=(",", ":")).encode() + b"\n" for item in items if item is not END
        )
        return lines, items[-1] is END

    def end(self) -> None:
        """End the stream after what is queued (a full queue: a reader that far behind is cut off)."""
        try:
            self.items.put_nowait(END)
        except queue.Full:
            self.overflowed = True
