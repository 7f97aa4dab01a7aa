"""StopSignals: SIGTERM and SIGINT as wake-ups that the main thread waits for.

The handlers only record: ``signal.set_wakeup_fd`` writes the signal number into a
socketpair at C level, and ``wait()`` reads it. No lock is taken in a handler (an
Event.set() there can deadlock against the interrupted main thread). Other threads
wake the waiter with ``wake()`` (it reads as 0). Entering installs the handlers;
leaving restores the previous ones.

``__enter__``, ``__exit__`` and ``wait`` belong to the main thread; ``wake`` to any.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WOKEN = 0


class StopSignals:
    def __init__(self) -> None:
        self._read_end, self._write_end = socket.socketpair()
        self._write_end.setblocking(False)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self.received: list[int] = []

    def __enter__(self) -> StopSignals:
        self._previous_wakeup = signal.set_wakeup_fd(self._write_end.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_wakeup)
        self._read_end.close()
        self._write_end.close()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def wake(self) -> None:
        try:
            self._write_end.send(bytes([WOKEN]))
        except OSError:
            pass

    def wait(self) -> int:
        """Block until a stop signal (returns its number) or ``wake()`` (returns 0)."""
        return self._read_end.recv(1)[0]
