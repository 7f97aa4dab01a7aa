"""The echo task's hard paths without a kernel: a scripted socket, waits driven by hand.

Like h11's ConnectionPair and gunicorn's FakeSocket: every ``recv_into``/``send`` result
(partial, EAGAIN, reset) is scripted, and the test plays the scheduler: it resumes the
task on readiness or throws WaitTimeout/Shutdown into it, which is what a deadline or
the stop would do at that moment. Each case runs in well under a millisecond.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable

import pytest

from server.engine import echo as echo_module
from server.engine.connection import Connection
from server.engine.echo import plain_echo
from server.engine.pipeline import STALL_CHECKS, EchoWaits, Pipeline, Step, Transport
from server.engine.waits import READ, WRITE, Shutdown, TaskGen, Wait, WaitTimeout

Script = bytes | int | BaseException  # recv: data (b"" = EOF) or an error; send: bytes taken or an error


class ScriptedSocket:
    """Plays back scripted results; records what was sent, shut down and set."""

    def __init__(self, reads: list[Script], sends: list[Script] | None = None) -> None:
        self.reads: deque[Script] = deque(reads)
        self.sends: deque[Script] = deque(sends or [])
        self.sent = bytearray()
        self.shut_write = False
        self.linger_reset = False
        self.unsent = 0  # what SIOCOUTQ would say
        self.recv_sizes: list[int] = []  # the most each recv_into asked for

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        step = self.reads.popleft()
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, bytes)
        limit = nbytes or len(buffer)
        if len(step) > limit:  # the rest stays queued, as in a kernel's receive buffer
            self.reads.appendleft(step[limit:])
            step = step[:limit]
        self.recv_sizes.append(limit)
        buffer[: len(step)] = step
        return len(step)

    def fileno(self) -> int:
        return 1_000_000  # no real descriptor: Run plays the scheduler's echo step with read/send

    def read(self, nbytes: int) -> bytes:
        """os.read's answer, played from the same script as recv_into."""
        buffer = memoryview(bytearray(nbytes))
        return bytes(buffer[: self.recv_into(buffer)])

    def send(self, data: memoryview) -> int:
        step: Script = self.sends.popleft() if self.sends else len(data)
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, int)
        taken = min(step, len(data))
        self.sent += data[:taken]
        return taken

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_WR
        self.shut_write = True

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        if option == socket.SO_LINGER:
            self.linger_reset = True


class Run:
    """One echo task over a ScriptedSocket, resumed by hand."""

    def __init__(
        self,
        sock: ScriptedSocket,
        monkeypatch: pytest.MonkeyPatch,
        steps: tuple[Step, ...] = (),
        transport: Transport = plain_echo,
    ) -> None:
        self.sock = sock
        self.conn = Connection(1, "127.0.0.1:9", "127.0.0.1", 0.0)
        self.closed: list[Connection] = []
        self.echo_steps = 0  # messages the played scheduler echoed without resuming the task
        monkeypatch.setattr(echo_module, "unsent_bytes", lambda _sock: self.sock.unsent)
        self.waits = EchoWaits.from_timeouts(300.0, 30.0, read_size=64)
        pipeline = Pipeline("tcp", steps, transport, self.waits, self.closed.append)
        self.gen: TaskGen = transport(sock, self.conn, memoryview(bytearray(64)), pipeline)  # type: ignore[arg-type]
        self.wait: Wait | None = self._advance(lambda: next(self.gen))

    def _advance(self, resume: Callable[[], object]) -> Wait | None:
        try:
            wait = resume()
        except StopIteration:
            return None
        assert isinstance(wait, Wait)
        return wait

    def ready(self) -> Wait | None:
        """The socket is ready for what the task waits for (an echo wait: the
        scheduler's echo step, played as waits.py describes it)."""
        wait = self.wait
        if wait is not None and wait.echo:
            self.wait = self._advance(lambda: self._echo_step(wait))
        else:
            self.wait = self._advance(lambda: self.gen.send(None))
        return self.wait

    def _echo_step(self, wait: Wait) -> object:
        try:
            data = self.sock.read(wait.echo)
        except BlockingIOError:
            return wait  # woken for nothing: the task is not resumed
        except Exception as error:
            return self.gen.throw(error)
        sent = 0
        if data:
            self.conn.bytes_in += len(data)
            try:
                sent = self.sock.send(memoryview(data))
            except BlockingIOError:
                pass
            except Exception as error:
                return self.gen.throw(error)
            if sent == len(data):
                self.conn.bytes_out += sent
                self.echo_steps += 1
                return wait  # echoed whole: the task is not resumed
        return self.gen.send((data, sent))

    def throw(self, error: BaseException) -> Wait | None:
        self.wait = self._advance(lambda: self.gen.throw(error))
        return self.wait

    def run_until_done(self, limit: int = 100) -> None:
        for _ in range(limit):
            if self.wait is None:
                return
            self.ready()
        raise AssertionError("the task did not end")


def test_a_partial_send_is_flushed_in_order_before_reading_more(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef", b"gh", b""], sends=[2, BlockingIOError(), 3, 1])
    run = Run(sock, monkeypatch)
    assert run.wait is not None and run.wait.events == READ
    assert run.ready() is not None and run.wait is not None and run.wait.events == WRITE  # owes "cdef"
    assert sock.reads == deque([b"gh", b""])  # nothing more read while owing
    run.run_until_done()
    assert bytes(sock.sent) == b"abcdefgh"
    assert (run.conn.reason, run.conn.bytes_in, run.conn.bytes_out) == ("eof", 8, 8)
    assert sock.shut_write and run.closed == [run.conn]


def test_eagain_on_read_just_waits_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([BlockingIOError(), b"x", b""])
    run = Run(sock, monkeypatch)
    run.ready()
    assert run.wait is not None and run.wait.events == READ and sock.sent == b""
    run.run_until_done()
    assert bytes(sock.sent) == b"x" and run.conn.reason == "eof"


def test_reset_while_flushing_ends_as_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef"], sends=[1, ConnectionResetError()])
    run = Run(sock, monkeypatch)
    run.ready()
    run.ready()  # writable: the send resets
    assert run.wait is None
    assert run.conn.reason == "reset" and run.conn.bytes_out == 0 and run.closed == [run.conn]


def test_half_close_during_a_flush_still_echoes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client sent "hello" and half-closed at once: EOF is queued behind the data.
    sock = ScriptedSocket([b"hello", b""], sends=[1, BlockingIOError(), 1, 3])
    run = Run(sock, monkeypatch)
    run.run_until_done()
    assert bytes(sock.sent) == b"hello" and run.conn.reason == "eof" and sock.shut_write


def test_shutdown_during_a_flush_finishes_the_flush_then_says_fin(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef", b"late", b""], sends=[2])
    run = Run(sock, monkeypatch)
    run.ready()
    assert run.wait is not None and run.wait.events == WRITE
    run.throw(Shutdown())  # the stop's grace deadline, mid-flush
    assert run.wait is not None and run.wait.events == WRITE  # what was read is still owed
    run.ready()  # flushed; then FIN, and what the client still sends is read and dropped
    assert bytes(sock.sent) == b"abcdef" and sock.shut_write
    run.run_until_done()
    assert run.conn.reason == "shutdown" and bytes(sock.sent) == b"abcdef"


def test_a_peer_that_takes_nothing_is_a_write_stall_closed_with_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef"], sends=[2])
    sock.unsent = 4096
    run = Run(sock, monkeypatch)
    run.ready()
    for _ in range(STALL_CHECKS - 1):  # each look a quarter of the timeout: nothing taken yet
        assert run.throw(WaitTimeout(7.5)) is not None and run.wait is run.waits.write_check
    run.throw(WaitTimeout(7.5))  # a whole timeout with nothing taken: a stall
    assert run.wait is None
    assert run.conn.reason == "write_stall" and sock.linger_reset and run.conn.bytes_out == 0


def test_a_slow_but_steady_reader_is_not_a_write_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef", b""], sends=[2])
    sock.unsent = 100_000
    run = Run(sock, monkeypatch)
    run.ready()
    for _ in range(5):  # within each write-stall period, the peer took a little
        for _ in range(STALL_CHECKS - 1):
            assert run.throw(WaitTimeout(7.5)) is not None
        sock.unsent -= 8192
        assert run.throw(WaitTimeout(7.5)) is not None
    for _ in range(STALL_CHECKS):  # then a whole period with nothing taken: a stall
        run.throw(WaitTimeout(7.5))
    assert run.conn.reason == "write_stall"


def test_a_reader_that_stops_is_reset_within_a_quarter_past_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound: between 1 and 1.25 write-stall timeouts after the peer last took
    anything, however early in a look's period it took it (looking once per timeout, as
    before, a peer that took some just after the flush began was reset 2 timeouts later)."""
    sock = ScriptedSocket([b"abcdef"], sends=[2])
    sock.unsent = 10_000
    run = Run(sock, monkeypatch)
    run.ready()  # the flush begins
    look = run.waits.write_check.timeout
    assert look is not None and look * STALL_CHECKS == run.waits.write.timeout
    sock.unsent = 9_000  # the peer takes some, just after the flush began
    looks = 0
    while run.wait is not None:
        run.throw(WaitTimeout(look))
        looks += 1
    assert run.conn.reason == "write_stall"
    # The progress is seen at the first look; then STALL_CHECKS looks without any.
    assert looks == 1 + STALL_CHECKS  # reset 1.25 timeouts after the flush began, at most
    assert STALL_CHECKS * look <= looks * look <= (1 + 1 / STALL_CHECKS) * STALL_CHECKS * look


def test_a_slow_reader_that_drains_completes_the_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abcdef", b""], sends=[2])
    sock.unsent = 10_000
    run = Run(sock, monkeypatch)
    run.ready()
    sock.unsent = 1_000
    run.throw(WaitTimeout(30.0))
    run.run_until_done()
    assert bytes(sock.sent) == b"abcdef" and run.conn.reason == "eof"


def test_idle_timeout_ends_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(ScriptedSocket([]), monkeypatch)
    run.throw(WaitTimeout(300.0))
    assert run.wait is None and run.conn.reason == "idle_timeout" and run.closed == [run.conn]


def test_a_bug_in_the_task_counts_as_error_not_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b"abc"], sends=[RuntimeError("bug")])
    run = Run(sock, monkeypatch)
    with pytest.raises(RuntimeError):
        run.ready()
    assert run.conn.reason == "error" and run.closed == [run.conn]


def test_closed_from_outside_is_a_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(ScriptedSocket([]), monkeypatch)
    run.gen.close()  # the scheduler's abort deadline
    assert run.conn.reason == "shutdown" and run.closed == [run.conn]


def test_after_the_shutdown_fin_it_closes_once_the_peer_holds_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSocket([b""])
    run = Run(sock, monkeypatch)
    run.throw(Shutdown())  # FIN sent; now it lingers for the client's EOF
    assert sock.shut_write and run.wait is not None and run.wait.timeout is not None
    sock.unsent = 10  # the peer has not acknowledged everything (our FIN included) yet
    assert run.throw(WaitTimeout(run.wait.timeout)) is not None
    sock.unsent = 0  # it has: nothing left to protect, close without waiting for its EOF
    assert run.throw(WaitTimeout(run.wait.timeout)) is None
    assert run.conn.reason == "shutdown" and sock.reads == deque([b""])
