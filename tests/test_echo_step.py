"""The scheduler's echo step (waits.py): a READ wait with ``echo`` set is completed in
the loop, and the task is resumed only for what the step could not complete.

Real socketpairs and a fake clock; where a case needs the kernel to misbehave (a partial
write, a reset mid-step, a wake-up for nothing) the scheduler's two calls are replaced.
"""

from __future__ import annotations

import os
import socket

import pytest

from server.engine import scheduler as scheduler_module
from server.engine.connection import Connection
from server.engine.echo import plain_echo
from server.engine.pipeline import EchoWaits, Pipeline
from server.engine.scheduler import Scheduler
from server.engine.waits import READ, WRITE, TaskGen, Wait, WaitTimeout
from tests.helpers import FakeClock, read_exactly

ECHO = Wait(READ, 5.0, echo=1024)


class Echoer:
    """A task that yields ECHO and records every resume: what it got, or what was thrown."""

    def __init__(self) -> None:
        self.resumes: list[object] = []

    def task(self) -> TaskGen:
        while True:
            try:
                echoed = yield ECHO
            except (WaitTimeout, OSError, TypeError) as error:
                self.resumes.append(type(error).__name__)
                return
            self.resumes.append(echoed)
            if echoed is not None and not echoed[0]:
                return


def start(scheduler: Scheduler) -> tuple[Echoer, Connection, socket.socket]:
    ours, peer = socket.socketpair()
    peer.settimeout(5.0)  # a step that never echoes fails the test, not hangs it
    echoer, conn = Echoer(), Connection(1, "peer", "127.0.0.1", 0.0)
    scheduler.spawn(echoer.task(), ours, state=conn)
    return echoer, conn, peer


def test_whole_messages_are_echoed_and_counted_without_resuming_the_task(scheduler: Scheduler) -> None:
    echoer, conn, peer = start(scheduler)
    with peer:
        for message in (b"hello", b"x" * 1000, b"\x00\xff" * 8):
            peer.sendall(message)
            scheduler.run_once(block=True)
            assert peer.recv(4096) == message
        assert echoer.resumes == []
        assert (conn.bytes_in, conn.bytes_out) == (1021, 1021)
        peer.shutdown(socket.SHUT_WR)
        scheduler.run_once(block=True)
    assert echoer.resumes == [(b"", 0)]  # EOF: the task decides what comes next


def test_echoed_messages_are_activity_for_the_idle_deadline(scheduler: Scheduler, clock: FakeClock) -> None:
    echoer, _conn, peer = start(scheduler)
    with peer:
        clock.now += 4.0
        peer.sendall(b"ping")
        scheduler.run_once(block=True)
        clock.now += 4.0  # 8 s after the wait began, 4 s after the message
        scheduler.run_once(block=False)
        assert echoer.resumes == []
        clock.now += 1.1
        scheduler.run_once(block=False)
    assert echoer.resumes == ["WaitTimeout"]


def test_a_partial_write_resumes_the_task_with_the_bytes_and_what_was_sent(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "write_fd", lambda fd, data: os.write(fd, data[:2]))
    echoer, conn, peer = start(scheduler)
    with peer:
        peer.sendall(b"abcdef")
        scheduler.run_once(block=True)
        assert peer.recv(16) == b"ab"
    assert echoer.resumes == [(b"abcdef", 2)]
    assert (conn.bytes_in, conn.bytes_out) == (6, 0)  # the rest is the task's to count


@pytest.mark.parametrize(
    ("call", "counted_in"),
    [("read_fd", 0), ("write_fd", 3)],
)
def test_an_error_in_the_step_is_thrown_into_the_task(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, call: str, counted_in: int
) -> None:
    def reset(*_args: object) -> int:
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(scheduler_module, call, reset)
    echoer, conn, peer = start(scheduler)
    with peer:
        peer.sendall(b"abc")
        scheduler.run_once(block=True)
    assert echoer.resumes == ["ConnectionResetError"]
    assert (conn.bytes_in, conn.bytes_out) == (counted_in, 0)


def test_a_wake_up_for_nothing_is_neither_a_resume_nor_activity(
    scheduler: Scheduler, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def would_block(*_args: object) -> bytes:
        raise BlockingIOError

    monkeypatch.setattr(scheduler_module, "read_fd", would_block)
    echoer, conn, peer = start(scheduler)
    with peer:
        clock.now += 4.0
        peer.sendall(b"abc")  # readable, yet every read finds nothing
        scheduler.run_once(block=True)
        assert echoer.resumes == [] and conn.bytes_in == 0
        clock.now += 1.1  # 5.1 s after the wait began, 1.1 s after the wake-up
        scheduler.run_once(block=False)
    assert echoer.resumes == ["WaitTimeout"]


def test_an_echo_wait_without_byte_counters_is_a_bug_thrown_into_the_task(scheduler: Scheduler) -> None:
    ours, peer = socket.socketpair()
    echoer = Echoer()
    with peer:
        scheduler.spawn(echoer.task(), ours, state=None)
    assert echoer.resumes == ["TypeError"]


def test_only_a_read_wait_can_carry_the_echo_step() -> None:
    with pytest.raises(ValueError, match="READ"):
        Wait(WRITE, 1.0, echo=1024)


class PlainEcho:
    """The real plain transport (echo.py) on the scheduler, over a socketpair."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.ours, self.peer = socket.socketpair()
        self.peer.settimeout(5.0)
        self.conn = Connection(1, "peer", "127.0.0.1", 0.0)
        self.closed: list[Connection] = []
        waits = EchoWaits.from_timeouts(300.0, 30.0, read_size=1024)
        pipeline = Pipeline("tcp", (), plain_echo, waits, self.closed.append)
        scheduler.spawn(plain_echo(self.ours, self.conn, scheduler.buffer, pipeline), self.ours, state=self.conn)

    def received(self, count: int) -> bytes:
        return read_exactly(self.peer, count)


def test_a_partial_write_is_flushed_by_the_task_then_the_step_takes_over_again(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []

    def first_write_partial(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return os.write(fd, data[:2] if len(writes) == 1 else data)

    monkeypatch.setattr(scheduler_module, "write_fd", first_write_partial)
    echo = PlainEcho(scheduler)
    with echo.peer:
        echo.peer.sendall(b"abcdef")
        scheduler.run_once(block=True)  # the step writes "ab"; the task owes "cdef"
        scheduler.run_once(block=True)  # writable: the task's flush sends the rest
        assert echo.received(6) == b"abcdef"
        echo.peer.sendall(b"gh")
        scheduler.run_once(block=True)  # the echo wait again: the step's own write
        assert echo.received(2) == b"gh" and writes == [6, 2]
        echo.peer.shutdown(socket.SHUT_WR)
        scheduler.run_once(block=True)
        assert echo.peer.recv(1) == b""  # FIN after the last echo
    assert echo.closed == [echo.conn]
    assert (echo.conn.reason, echo.conn.bytes_in, echo.conn.bytes_out) == ("eof", 8, 8)


def test_shutdown_at_the_echo_wait_ends_with_fin_after_everything_echoed(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    echo = PlainEcho(scheduler)
    with echo.peer:
        echo.peer.sendall(b"hello")
        scheduler.run_once(block=True)
        assert echo.received(5) == b"hello"
        scheduler.request_stop(clock.now, clock.now + 10.0)
        scheduler.run_once(block=True)  # the stop arrives; its grace is now: Shutdown
        scheduler.run_once(block=False)
        assert echo.peer.recv(1) == b""  # FIN: read no more, nothing was owed
        echo.peer.close()
        for _ in range(3):
            scheduler.run_once(block=False)
    assert echo.closed == [echo.conn]
    assert (echo.conn.reason, echo.conn.bytes_in, echo.conn.bytes_out) == ("shutdown", 5, 5)
