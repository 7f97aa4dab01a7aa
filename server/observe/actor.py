"""Actor: a thread that owns some state and is reached only through its Queue mailbox.

    actor.start()            # any thread, once
    actor.send(message)      # any thread; never blocks: False (and counted) if full
    actor.send_wait(m, t)    # any thread; waits up to t seconds for room
    actor.close(); actor.join(timeout)   # the stop marker goes after everything sent

Subclasses override ``handle(message)`` (and optionally ``idle()``, called when the
mailbox has just run empty); both run on the actor's thread only. With ``gather_s`` > 0
the actor, woken from idle by a message, first waits that long so that a burst is
handled in one wake-up (a thread woken per message costs a context switch and a GIL
hand-off each: the log of a busy server's connections would cost more than the echo). The stop marker is a
private object, so None is a valid message. An exception escaping ``handle`` is
reported on stderr with its traceback, kept in ``error``, and stops the actor: never
silent. stderr, not ``logging``, because logging may itself be routed to an actor.
A dead actor empties its mailbox and refuses what is sent after (``send`` returns
False at once), so that no sender waits for room that would never come.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from typing import Any

_STOP = object()


class Actor:
    def __init__(self, name: str, mailbox_size: int = 0, gather_s: float = 0.0) -> None:
        self.name = name
        self._gather_s = gather_s
        self._mailbox: queue.Queue[Any] = queue.Queue(mailbox_size)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def send(self, message: Any) -> bool:
        if self.error is not None:
            return False
        try:
            self._mailbox.put_nowait(message)
        except queue.Full:
            return False
        return True

    def send_wait(self, message: Any, timeout: float) -> bool:
        if self.error is not None:
            return False
        try:
            self._mailbox.put(message, timeout=timeout)
        except queue.Full:
            return False
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Ask the actor to stop after the messages already sent. False if no room came."""
        return self.send_wait(_STOP, timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it has ended."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def handle(self, message: Any) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """The mailbox has just run empty."""

    def _main(self) -> None:
        mailbox = self._mailbox
        rested = True
        try:
            while True:
                message = mailbox.get()
                if rested and self._gather_s:
                    time.sleep(self._gather_s)  # let the burst this message begins gather
                rested = False
                if message is _STOP:
                    break
                self.handle(message)
                if mailbox.empty():
                    self.idle()
                    rested = True
            self.idle()
        except BaseException as error:
            self.error = error
            self._discard()  # wakes senders waiting for room
            print(f"actor {self.name} failed:", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)

    def _discard(self) -> None:
        while True:
            try:
                self._mailbox.get_nowait()
            except queue.Empty:
                return
