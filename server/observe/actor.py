"""Actor: a thread that owns some state and is reached only through its mailbox.

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

The mailbox is a deque, not a ``queue.Queue``: a send is an append (thread-safe on a
deque) and a length check, with no lock, and wakes the actor's thread only if it sleeps
(once per burst, not once per message); the actor takes messages one by one without a
lock either. A Queue takes a lock and signals a condition on both sides of every
message: at connection churn (two log lines per connection) the log actor's CPU per
connection went from 9 to 7 us without it. The bound is checked before the append, so
threads sending at the very same moment may each add one past it; only senders waiting
for room (``send_wait``, ``close``) take a lock. The wake-up hand-shake
(``_sleep_until_sent``) relies on the GIL's ordering of plain reads and writes.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

_STOP = object()


class Actor:
    def __init__(self, name: str, mailbox_size: int = 0, gather_s: float = 0.0) -> None:
        self.name = name
        self._gather_s = gather_s
        self._mailbox: deque[Any] = deque()
        self._size = mailbox_size  # 0: unbounded
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.error: BaseException | None = None
        # The actor's thread waits on _wake only after saying so in _asleep; a sender
        # that sees it asleep wakes it (see _sleep_until_sent for why none is missed).
        self._asleep = False
        self._wake = threading.Event()
        # Senders waiting for room: counted before they look, told under _room.
        self._room = threading.Condition()
        self._waiting_for_room = 0

    def start(self) -> None:
        self._thread.start()

    def send(self, message: Any) -> bool:
        return self._post(message)

    def _post(self, message: Any) -> bool:
        """Append ``message`` if there is room (any thread; what subclasses' send calls
        too, so that send_wait's tries are not counted as drops)."""
        if self.error is not None:
            return False
        mailbox = self._mailbox
        if self._size and len(mailbox) >= self._size:
            return False
        mailbox.append(message)
        if self._asleep:
            self._asleep = False  # the next senders need not wake it again
            self._wake.set()
        return True

    def send_wait(self, message: Any, timeout: float) -> bool:
        if self._post(message):
            return True
        if self.error is not None:
            return False
        deadline = time.monotonic() + timeout
        with self._room:
            self._waiting_for_room += 1  # before looking: the actor tells us if it makes room after
            try:
                while True:
                    if self._post(message):
                        return True
                    remaining = deadline - time.monotonic()
                    if self.error is not None or remaining <= 0:
                        return False
                    self._room.wait(remaining)
            finally:
                self._waiting_for_room -= 1

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
        try:
            while True:
                if not mailbox:
                    self._sleep_until_sent()
                if self._gather_s:
                    time.sleep(self._gather_s)  # let the burst this message begins gather
                while mailbox:
                    message = mailbox.popleft()
                    if self._waiting_for_room:
                        self._made_room()
                    if message is _STOP:
                        self.idle()
                        return
                    self.handle(message)
                self.idle()
        except BaseException as error:
            self.error = error
            self._discard()  # wakes senders waiting for room
            print(f"actor {self.name} failed:", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)

    def _sleep_until_sent(self) -> None:
        """Wait for a message. Announced, then looked for again, then waited for: a sender
        appends, then looks at _asleep. If it looked before the announcement, its message
        was in the mailbox before the second look, which finds it; if after, it wakes us."""
        self._wake.clear()
        self._asleep = True
        if not self._mailbox:
            self._wake.wait()
        self._asleep = False

    def _made_room(self) -> None:
        with self._room:
            self._room.notify_all()

    def _discard(self) -> None:
        self._mailbox.clear()
        self._made_room()
