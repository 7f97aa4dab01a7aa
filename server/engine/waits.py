"""What a task may yield, and what may be thrown into it: the vocabulary every generator
task on a Scheduler speaks (scheduler.py runs them).

    yield Wait(READ, timeout)    # its socket is readable (or WaitTimeout is thrown in)
    yield Wait(WRITE, timeout)   # its socket is writable (or WaitTimeout)
    yield Sleep(seconds)         # time passed
    yield Wait(ACCEPT, timeout)  # as READ, for a listening socket shared by processes
    yield Wait(READ, timeout, echo=size)  # the echo step, completed by the scheduler

An echo wait hands the echo loop's steady state to the scheduler: when the socket is
readable, the scheduler itself reads up to ``echo`` bytes (``os.read``) and writes them
back (``os.write``), counting them into the task's ``state`` (a Connection: its
``bytes_in`` when read, ``bytes_out`` when written in full), and keeps the wait. The
task is resumed only when that step did not complete, with what it got:

    (data, sent)   the bytes read and how many of them were written (sent < len(data)),
                   or (b"", 0) at EOF; bytes_out is then the task's to count
    an exception   thrown in, as raised by the read (nothing counted) or the write
                   (bytes_in counted)

An EAGAIN on the read (woken for nothing) keeps waiting, and is not activity. So a
connection echoing whole messages costs the interpreter no generator resume at all.

ACCEPT registers the socket with EPOLLEXCLUSIVE (where there is epoll): when a
connection arrives on a listener that several workers wait on, the kernel wakes one of
them (or a few), not all (the thundering herd). It wakes the first idle waiter in its
queue, so the scheduler re-queues the socket at the back at each ACCEPT wait (two
epoll_ctl calls per wake-up): idle workers take turns.

Shutdown is thrown into each task still running at a stop's grace deadline. Plain
immutable values and two helpers (``reset_on_close``, ``every``): any thread may use
them; a task uses them on its scheduler's thread.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable, Generator

# The poller's own event bits (EPOLLIN/POLLIN, EPOLLOUT/POLLOUT: the same values).
READ = select.POLLIN
WRITE = select.POLLOUT
EXCLUSIVE: int = getattr(select, "EPOLLEXCLUSIVE", 0)  # epoll only, Linux 4.5+
ACCEPT = READ | EXCLUSIVE


class Wait:
    """Wait until the task's socket is ready for ``events``; ``timeout`` seconds or None;
    ``echo``: the most bytes the scheduler's echo step reads (READ only; 0: no echo step).

    Never changed once made: the scheduler takes the same object yielded again as the
    same wait (a task keeps its Waits and yields them again and again)."""

    __slots__ = ("echo", "events", "timeout")

    def __init__(self, events: int, timeout: float | None = None, *, echo: int = 0) -> None:
        if echo and events != READ:
            raise ValueError("only a READ wait can carry the echo step")
        self.events = events
        self.timeout = timeout
        self.echo = echo


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class WaitTimeout(Exception):
    """Thrown into a task whose Wait lasted ``timeout`` seconds with no readiness."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


class Shutdown(Exception):
    """Thrown into each remaining task at the stop's grace deadline: finish up."""


Echoed = tuple[bytes, int]  # an echo step the scheduler could not complete (see above)
TaskGen = Generator["Wait | Sleep", "Echoed | None", None]


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def reset_on_close(sock: socket.socket) -> None:
    """Make close() send RST: no orphaned kernel buffers for a peer that stopped reading."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


def every(interval_s: float, action: Callable[[], None]) -> TaskGen:
    """A task that calls ``action`` every ``interval_s`` seconds on its scheduler."""
    while True:
        yield Sleep(interval_s)
        action()
