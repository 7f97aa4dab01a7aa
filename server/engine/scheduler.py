"""Scheduler: runs many generator tasks in one thread, on one epoll set.

A task is a generator written like the blocking loop it replaces. It yields what it
waits for (waits.py: Wait(READ | WRITE | ACCEPT, timeout), Sleep(seconds)) and is
resumed when that happens, or has WaitTimeout or Shutdown thrown in (and, from an
echo wait's step, the exception its read or write raised).

A task owns at most one socket, given at ``spawn``; from then on the scheduler owns
that socket's registration and closes it when the task ends (the task must not close
it: the registration goes first).

The readiness source is ``select.epoll`` used directly (``select.poll`` where there is
no epoll), with a file descriptor -> task table: one C call per loop turn and one dict
lookup per ready socket. ``selectors`` costs a Python-level loop, a SelectorKey lookup
and a tuple per ready event on top (measured: most of the interpreter time of a turn
with one event; see docs/design.md).

An echo wait (waits.py) is completed here, in the loop: read, write back, count, keep
the wait. The task is resumed only for EOF, a partial write or an error, which takes a
generator resume, a yield and a Wait check off every message (measured: 9% of the
server's user time at 50 connections x 1 KiB; docs/design.md). A task that yields the
very Wait it yielded last is taken on at once (registration and heap entry still hold;
only the wait's start moves): Waits are never changed once made.

Deadlines are lazy but exact (see timers.py): the hot path reads no clock and touches
no timer structure; a wait records when it began (``now``, read once per loop turn),
and every deadline fires in the first loop turn at or after it is due. A task that
ends drops its socket and state at once; its heap entry goes at its own time or the
next compaction, whichever comes first.

Heartbeat: ``now`` is read once a turn, after the poll; the loop turns at least every
MAX_IDLE_S even with nothing to do, so ``stalled_for()`` (any thread) is how long the
loop has been stuck in a task that does not yield: /healthz names such a loop.

Threads: ``run``/``run_once``, ``spawn`` and ``tasks`` belong to the scheduler's own
thread (tasks run there). ``call_soon_threadsafe``, ``spawn_threadsafe``,
``request_stop`` and ``stalled_for`` may be called from any thread: all but the last go
through the scheduler's Inbox (inbox.py).

Stopping: ``request_stop(grace, abort)`` closes daemon tasks at once, throws Shutdown
into the others at ``grace`` (they finish on their own terms), and closes whatever is
left at ``abort`` with a reset. ``run`` returns once no task is left.

A task spawned ``critical`` (the acceptor) must live until the stop: if it ends any
other way, ``on_critical_exit`` is called with why (the server then stops, exit 1).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from server.engine.inbox import Inbox, StopRequest
from server.engine.os_names import name_thread
from server.engine.task import Task
from server.engine.timers import Deadlines
from server.engine.waits import (
    EXCLUSIVE,
    READ,
    Echoed,
    Shutdown,
    Sleep,
    TaskGen,
    Wait,
    WaitTimeout,
    reset_on_close,
)

MAX_IDLE_S = 1.0  # an idle loop still turns this often: its heartbeat
# The echo step's two calls (waits.py): names here, so a test can play a socket that
# has no descriptor. os.read/os.write cost less interpreter time than sock.recv_into and
# sock.send of a slice (measured: 1.4 us per message at one connection x 64 B) for the
# same read()/write() system calls.
read_fd = os.read
write_fd = os.write
_HAS_EPOLL = hasattr(select, "epoll")

log = logging.getLogger("echo.scheduler")


def _name(task: Task) -> str:
    return getattr(task.gen, "__qualname__", repr(task.gen))


class Scheduler:
    """Generator tasks on one selector, in one thread. See the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        buffer_size: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
        on_critical_exit: Callable[[str, BaseException | None], None] | None = None,
    ) -> None:
        self.name = name
        # Scratch memory for this scheduler's tasks, valid between two yields only.
        self.buffer = memoryview(bytearray(buffer_size))
        self._clock = clock
        self.now = clock()
        self._on_critical_exit = on_critical_exit
        self._poller: Any = select.epoll() if _HAS_EPOLL else select.poll()
        # Wait up to so many seconds for ready sockets: epoll takes seconds, poll milliseconds.
        self._poll: Callable[[float], list[tuple[int, int]]] = (
            self._poller.poll if _HAS_EPOLL else lambda seconds: self._poller.poll(seconds * 1000.0)
        )
        self._by_fd: dict[int, Task] = {}  # the registered sockets' tasks
        self._inbox = Inbox()
        self._wake = self._inbox.wake  # any thread
        self._wake_fd = self._inbox.fileno()
        self._poller.register(self._wake_fd, READ)
        self._tasks: set[Task] = set()
        self._deadlines: Deadlines[Task] = Deadlines()
        self._heap = self._deadlines.heap  # the same list for good (timers.py)
        self._stop: StopRequest | None = None
        self._shutdown_thrown = False
        self._closing = False  # run() is ending (stopped, or a fault escaped a turn)
        self._running = False  # inside run(): only then can the loop stall

    # --- any thread ---------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the scheduler's thread at its next turn."""
        self._inbox.put((fn, args))

    def spawn_threadsafe(
        self,
        gen: TaskGen,
        sock: socket.socket | None = None,
        *,
        daemon: bool = False,
        critical: bool = False,
        state: Any = None,
    ) -> None:
        """``spawn`` from any thread: the task starts at the scheduler's next turn."""
        self._inbox.put((lambda: self.spawn(gen, sock, daemon=daemon, critical=critical, state=state), ()))

    def request_stop(self, grace: float, abort: float) -> None:
        """Stop: daemon tasks now, Shutdown into the rest at ``grace``, reset at ``abort``
        (both on the scheduler's clock)."""
        self._inbox.put(StopRequest(grace, abort))

    def stalled_for(self) -> float:
        """Seconds since the running loop last turned, less the idle wait it may take
        (0 when it is not running). Any thread: a float attribute, read once."""
        if not self._running:
            return 0.0
        return max(0.0, self._clock() - self.now - MAX_IDLE_S)

    # --- the scheduler's thread ---------------------------------------------------------

    def spawn(
        self,
        gen: TaskGen,
        sock: socket.socket | None = None,
        *,
        daemon: bool = False,
        critical: bool = False,
        state: Any = None,
    ) -> Task:
        """Start a task; it runs until its first yield now."""
        task = Task(gen, sock, daemon, state, critical)
        self._tasks.add(task)
        if self._stop is not None and daemon:
            self._end(task, close_gen=True)
            return task
        self._step(task, None)
        return task

    def tasks(self) -> Iterator[Task]:
        return iter(tuple(self._tasks))

    def timer_entries(self) -> int:
        """Entries in the deadline heap, live and stale (for tests and leak checks)."""
        return len(self._deadlines)

    def run(self) -> None:
        """Run tasks until a stop was requested and every task has ended."""
        self.now = self._clock()
        self._running = True
        name_thread(f"echo {self.name}")  # top -H shows which loop is busy
        try:
            self._turn(block=True, once=False)
        finally:
            self._running = False
            self._close()

    def run_once(self, block: bool = True) -> bool:
        """One loop turn; returns False once stopped and empty."""
        return self._turn(block, once=True)

    def _turn(self, block: bool, once: bool) -> bool:
        """Loop turns (one if ``once``); False once stopped and empty.

        With one message per turn, the turn's own bookkeeping is a measurable share of
        the interpreter's time per message: so what it uses is bound once here, outside
        the loop, and nothing in a turn calls a method or reads the clock but the poll.
        """
        poll, clock, by_fd, heap, wake_fd = self._poll, self._clock, self._by_fd, self._heap, self._wake_fd
        read, write = read_fd, write_fd
        data: bytes | None = None
        echoed: Echoed | None = None
        while True:
            if not block:
                timeout = 0.0
            elif self._stop is not None:
                timeout = self._next_timeout()
            elif heap:
                # self.now was read after the last poll: no second clock read per turn.
                timeout = heap[0][0] - self.now
                if timeout > MAX_IDLE_S:
                    timeout = MAX_IDLE_S
                elif timeout < 0.0:
                    timeout = 0.0
            else:
                timeout = MAX_IDLE_S
            ready = poll(timeout)
            self.now = now = clock()
            for fd, _ in ready:
                # Only live tasks are registered: _end unregisters before anything else.
                task = by_fd.get(fd)
                if task is None:
                    if fd == wake_fd:
                        self._drain_inbox()
                    continue  # a task ended earlier in this turn
                echoed = None
                size = task.echo
                if size:  # the echo step (waits.py), done here: no resume per message
                    try:
                        data = read(fd, size)
                    except BlockingIOError:
                        continue  # woken for nothing: the wait and its deadline hold
                    except Exception as error:  # thrown into the task, as if it had made the call
                        self._step(task, error)
                        continue
                    received = len(data)
                    sent = 0
                    if received:
                        # No local for the Connection: the loop's frame would keep the last one alive.
                        task.state.bytes_in += received
                        try:
                            sent = write(fd, data)
                        except BlockingIOError:
                            pass
                        except Exception as error:  # thrown into the task, as if it had made the call
                            self._step(task, error)
                            continue
                        if sent == received:
                            task.state.bytes_out += received
                            task.wait_since = now
                            continue
                    echoed = (data, sent)  # EOF or a partial write: the task's to handle
                try:
                    wait = task.send(echoed)
                except StopIteration:
                    self._end(task)
                    continue
                except Exception as failure:
                    self._failed(task, failure)
                    continue
                if wait is task.wait:
                    # The same Wait again: an entry at or before the old deadline is at
                    # or before the new one; only the wait's start moves.
                    task.wait_since = now
                else:
                    self._settle(task, wait)
            # The loop's frame outlives every connection: let it hold no payload.
            data = echoed = None
            if heap and heap[0][0] <= now:
                for task in self._deadlines.pop_due(now):
                    self._step(task, None if task.sleeping else WaitTimeout(task.timeout or 0.0))
            if self._stop is not None and not self._advance_stop():
                return False
            if once:
                return True

    def _step(self, task: Task, error: BaseException | None) -> None:
        """Resume ``task`` (or throw ``error`` into it) and settle what it yields next."""
        try:
            wait = task.send(None) if error is None else task.gen.throw(error)
        except StopIteration:
            self._end(task)
            return
        except Exception as failure:
            self._failed(task, failure)
            return
        self._settle(task, wait)

    def _failed(self, task: Task, failure: Exception) -> None:
        if not (task.critical and self._on_critical_exit):  # else that one reports it
            log.exception("task %s on %s failed", _name(task), self.name)
        self._end(task, failure=failure)

    def _settle(self, task: Task, wait: object) -> None:
        """Register what ``task`` now waits for and arm its deadline."""
        if type(wait) is Wait:
            if wait.echo and not (hasattr(task.state, "bytes_in") and hasattr(task.state, "bytes_out")):
                self._reject(task, "an echo Wait needs a task state that counts bytes_in and bytes_out")
                return
            events = wait.events
            if events != task.events:
                assert task.sock is not None, "a Wait needs the task's socket"
                if task.events and not (events | task.events) & EXCLUSIVE:
                    self._poller.modify(task.fd, events)
                else:  # EPOLLEXCLUSIVE cannot be modified: register afresh
                    if task.events:
                        self._unregister(task)
                    self._poller.register(task.fd, events)
                    self._by_fd[task.fd] = task
                task.events = events
            elif events & EXCLUSIVE:  # to the back of the socket's exclusive waiters
                self._poller.unregister(task.fd)
                self._poller.register(task.fd, events)
            # An exclusive wait re-queues at every yield: never the loop's shortcut.
            task.wait = None if events & EXCLUSIVE else wait
            task.echo = wait.echo
            task.sleeping = False
            timeout = wait.timeout
        elif type(wait) is Sleep:
            if task.events:
                self._unregister(task)
            task.wait = None
            task.echo = 0
            task.sleeping = True
            timeout = wait.seconds
        else:
            self._reject(task, f"a task yielded {wait!r}, not a Wait or Sleep")
            return
        now = task.wait_since = self.now
        task.timeout = timeout
        if timeout is not None:
            armed = task.armed
            if armed is None or now + timeout < armed:
                self._deadlines.arm(task, now + timeout)

    def _reject(self, task: Task, problem: str) -> None:
        """A yield the scheduler cannot take on: a bug, thrown back into the task."""
        task.wait = None
        task.echo = 0
        self._step(task, TypeError(problem))

    def _end(
        self, task: Task, *, close_gen: bool = False, reset: bool = False, failure: BaseException | None = None
    ) -> None:
        if task.done:
            return
        task.done = True
        if close_gen:
            try:
                task.gen.close()
            except Exception as error:
                log.exception("task %s on %s failed while closing", _name(task), self.name)
                failure = failure or error
        self._tasks.discard(task)
        self._deadlines.cancel(task)
        sock = task.sock
        if sock is not None:
            if task.events:
                self._unregister(task)
            if reset:
                reset_on_close(sock)
            sock.close()
        # A stale heap entry may still point at the task: let it hold nothing else.
        task.sock = task.state = None
        # When run() itself is ending, whoever runs it hears why (its Future): not this.
        if task.critical and self._stop is None and not self._closing and self._on_critical_exit is not None:
            self._on_critical_exit(f"task {_name(task)} on {self.name} ended", failure)

    def _unregister(self, task: Task) -> None:
        self._poller.unregister(task.fd)
        del self._by_fd[task.fd]
        task.events = 0

    def _drain_inbox(self) -> None:
        for item in self._inbox.take():
            if isinstance(item, StopRequest):
                self._begin_stop(item)
                continue
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("call on %s failed", self.name)

    def _next_timeout(self) -> float:
        when = self._deadlines.next_when()
        if self._stop is not None:
            if not self._tasks:
                return 0.0
            stop_at = self._stop.abort if self._shutdown_thrown else self._stop.grace
            when = stop_at if when is None else min(when, stop_at)
        if when is None:
            return MAX_IDLE_S
        # self.now was read after this turn's select: no second clock read per turn.
        return min(MAX_IDLE_S, max(0.0, when - self.now))

    # --- stopping (the scheduler's thread) ------------------------------------------------

    def _begin_stop(self, request: StopRequest) -> None:
        if self._stop is None:
            self._stop = request
        else:  # a later request may only make the stop sooner
            self._stop = StopRequest(min(self._stop.grace, request.grace), min(self._stop.abort, request.abort))
        for task in [t for t in self._tasks if t.daemon]:
            self._end(task, close_gen=True)

    def _advance_stop(self) -> bool:
        assert self._stop is not None
        if not self._shutdown_thrown and self.now >= self._stop.grace:
            self._shutdown_thrown = True
            for task in list(self._tasks):
                if not task.done:
                    self._step(task, Shutdown())
        if self.now >= self._stop.abort:
            for task in list(self._tasks):
                self._end(task, close_gen=True, reset=True)
        return bool(self._tasks)

    def _close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            self._end(task, close_gen=True, reset=True)
        if _HAS_EPOLL:
            self._poller.close()
        self._inbox.close()
