"""Signals: what each signal means, delivered as wake-ups that the main thread waits for.

    signal    meaning (Action)
    SIGTERM   STOP: stop accepting, drain, exit 0 (a second stop signal: exit 1 at once)
    SIGINT    STOP
    SIGQUIT   STOP (graceful, as nginx and gunicorn read it; no core dump)
    SIGHUP    RELOAD: new workers (with --workers), the TLS certificate (with --tls-port);
              otherwise logged and ignored (see cli.py)
    SIGUSR1   REOPEN_LOG: reopen the log file (logrotate's convention)
    others    their defaults (SIGUSR2: ends the process at once; nothing needs it yet)

Two more wake-ups come from threads rather than the kernel, through ``wake``:
STOPPED (the stopper thread has finished) and THREAD_FAILED (a server thread died).

The handlers only record: ``signal.set_wakeup_fd`` writes the signal number into a
socketpair at C level, and ``wait()`` reads it. No lock is taken in a handler (an
Event.set() there can deadlock against the interrupted main thread). Entering installs
the handlers; leaving restores the previous ones.

``__enter__``, ``__exit__`` and ``wait`` belong to the main thread; ``wake`` to any.
"""

from __future__ import annotations

import enum
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType


class Action(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"
    REOPEN_LOG = "reopen_log"
    STOPPED = "stopped"
    THREAD_FAILED = "thread_failed"


MEANINGS: Mapping[signal.Signals, Action] = {
    signal.SIGTERM: Action.STOP,
    signal.SIGINT: Action.STOP,
    signal.SIGQUIT: Action.STOP,
    signal.SIGHUP: Action.RELOAD,
    signal.SIGUSR1: Action.REOPEN_LOG,
}
# Wake-up bytes from threads: never a signal number (1 .. SIGRTMAX, at most 64 on Linux).
_WAKE_CODES: Mapping[Action, int] = {Action.STOPPED: 0, Action.THREAD_FAILED: 255}


@dataclass(frozen=True, slots=True)
class Wakeup:
    action: Action
    signal: signal.Signals | None = None  # None: a wake() from a thread

    @property
    def name(self) -> str:
        return self.signal.name if self.signal is not None else self.action.value


class Signals:
    def __init__(self, meanings: Mapping[signal.Signals, Action] = MEANINGS) -> None:
        self._meanings = dict(meanings)
        self._by_code: dict[int, Wakeup] = {int(s): Wakeup(action, s) for s, action in self._meanings.items()}
        self._by_code.update({code: Wakeup(action) for action, code in _WAKE_CODES.items()})
        self._read_end, self._write_end = socket.socketpair()
        self._write_end.setblocking(False)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self.received: list[int] = []

    def __enter__(self) -> Signals:
        self._previous_wakeup = signal.set_wakeup_fd(self._write_end.fileno(), warn_on_full_buffer=False)
        for signum in self._meanings:
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

    def wake(self, action: Action = Action.STOPPED) -> None:
        """Wake the waiter with ``action`` (STOPPED or THREAD_FAILED); any thread."""
        try:
            self._write_end.send(bytes([_WAKE_CODES[action]]))
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> Wakeup | None:
        """Block until a handled signal arrives or a thread calls ``wake()``; None if
        ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._read_end.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
            try:
                code = self._read_end.recv(1)[0]
            except TimeoutError:
                return None
            wakeup = self._by_code.get(code)
            if wakeup is not None:
                return wakeup
