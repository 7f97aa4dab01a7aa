"""Each fault behaviour without a kernel: test_echo_script's ScriptedSocket, a fake
clock that moves only when the task sleeps or a wait times out, and the test playing
the scheduler. What is asserted is what the client would see: bytes sent, FIN or RST,
the close reason, and how long the task held each chunk."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from server.engine import echo as echo_module
from server.engine.connection import Connection
from server.engine.pipeline import EchoWaits
from server.engine.waits import READ, Shutdown, Sleep, TaskGen, Wait, WaitTimeout
from server.faults.behaviours import BURST_S, faulted_loop
from server.faults.policy import Fault
from server.faults.rules import parse_flag
from tests.helpers import FakeClock
from tests.test_echo_script import Script, ScriptedSocket

IDLE_S = 300.0


class Run:
    """One faulted loop over a ScriptedSocket; ``ready`` resumes it, and a Sleep the
    task yields advances the fake clock by exactly its length when resumed."""

    def __init__(self, flag: str, reads: Sequence[Script], monkeypatch: pytest.MonkeyPatch, seed: int = 1) -> None:
        self.sock = ScriptedSocket(list(reads))
        self.conn = Connection(1, "127.0.0.1:9", "127.0.0.1", 0.0)
        self.clock = FakeClock()
        self.clock.now = 0.0  # the task starts at 0: times below read as seconds since
        self.sleeps: list[float] = []
        monkeypatch.setattr(echo_module, "unsent_bytes", lambda _sock: 0)
        loop = faulted_loop(Fault(parse_flag(flag), 0, seed), self.clock)
        waits = EchoWaits.from_timeouts(IDLE_S, 30.0)
        self.gen: TaskGen = loop(self.sock, self.conn, memoryview(bytearray(64)), waits)  # type: ignore[arg-type]
        self.wait: Wait | Sleep | None = self._advance(lambda: next(self.gen))

    def _advance(self, resume: Callable[[], Wait | Sleep]) -> Wait | Sleep | None:
        try:
            wait = resume()
        except StopIteration:
            return None
        if isinstance(wait, Sleep):
            self.sleeps.append(wait.seconds)
        return wait

    def ready(self) -> Wait | Sleep | None:
        if isinstance(self.wait, Sleep):
            self.clock.now += self.wait.seconds
        self.wait = self._advance(lambda: self.gen.send(None))
        return self.wait

    def throw(self, error: BaseException, after_s: float = 0.0) -> Wait | Sleep | None:
        self.clock.now += after_s
        self.wait = self._advance(lambda: self.gen.throw(error))
        return self.wait

    def run_until_done(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if self.wait is None:
                return
            self.ready()
        raise AssertionError("the task did not end")


def test_delay_holds_each_chunk_before_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("delay:delay_ms=200", [b"abc", b"de", b""], monkeypatch)
    assert isinstance(run.wait, Wait) and run.wait.events == READ
    assert isinstance(run.ready(), Sleep) and run.sock.sent == b""  # read, held, not yet echoed
    run.ready()
    assert run.sock.sent == b"abc"
    run.run_until_done()
    assert run.sleeps == [0.2, 0.2] and run.sock.sent == b"abcde"
    assert run.conn.reason == "eof" and run.sock.shut_write


def test_delay_jitter_stays_within_its_bounds_and_first_only_holds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("delay:delay_ms=100,jitter_ms=40", [b"x"] * 200 + [b""], monkeypatch)
    run.run_until_done()
    assert len(run.sleeps) == 200 and all(0.06 <= s <= 0.14 for s in run.sleeps)
    assert len(set(run.sleeps)) > 100  # jittered, not a constant
    once = Run("delay:delay_ms=100,first_only=true", [b"a", b"b", b"c", b""], monkeypatch)
    once.run_until_done()
    assert once.sleeps == [0.1] and once.sock.sent == b"abc"


def test_bandwidth_paces_the_echo_to_bytes_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 1000.0
    run = Run(f"bandwidth:bytes_per_s={rate:g}", [b"x" * 64] * 100 + [b""], monkeypatch)
    run.run_until_done()
    assert bytes(run.sock.sent) == b"x" * 6400 and run.conn.reason == "eof"
    burst = rate * BURST_S
    assert run.clock.now == pytest.approx((6400 - burst) / rate, rel=0.01)  # the first burst is free


def test_bandwidth_makes_up_for_a_sleep_that_overran(monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 1000.0
    run = Run(f"bandwidth:bytes_per_s={rate:g}", [b"x" * 64] * 100 + [b""], monkeypatch)
    overran = False
    while run.wait is not None:
        if isinstance(run.wait, Sleep) and not overran:
            run.clock.now += 0.2  # the scheduler woke the task 200 ms late (a busy machine)
            overran = True
        run.ready()
    assert overran and bytes(run.sock.sent) == b"x" * 6400
    assert run.clock.now == pytest.approx((6400 - rate * BURST_S) / rate, rel=0.01)  # still on schedule


def test_close_after_exactly_n_echoed_bytes_then_fin(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("close:after_bytes=10", [b"abcdefgh", b"ijklmnop", b""], monkeypatch)
    run.run_until_done()
    assert bytes(run.sock.sent) == b"abcdefghij"  # not one byte more
    assert run.sock.recv_sizes[:2] == [10, 2]  # it never read past the tenth byte
    assert run.conn.reason == "fault_close" and run.sock.shut_write and not run.sock.linger_reset
    assert run.conn.bytes_out == 10


def test_reset_at_accept_reads_nothing_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("reset", [b"abc"], monkeypatch)
    assert run.wait is None
    assert run.conn.reason == "fault_reset" and run.sock.linger_reset and run.sock.sent == b""
    assert run.sock.recv_sizes == []


def test_reset_after_n_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("reset:after_bytes=4", [b"abcdef"], monkeypatch)
    run.run_until_done()
    assert bytes(run.sock.sent) == b"abcd" and run.conn.reason == "fault_reset" and run.sock.linger_reset
    assert not run.sock.shut_write


def test_reset_after_t_seconds_even_while_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("reset:after_s=2", [b"abc", b"def"], monkeypatch)
    assert isinstance(run.wait, Wait) and run.wait.timeout == 2.0  # not the idle timeout
    run.clock.now = 1.5
    run.ready()
    assert bytes(run.sock.sent) == b"abc"
    assert isinstance(run.wait, Wait) and run.wait.timeout == pytest.approx(0.5)
    run.throw(WaitTimeout(0.5), after_s=0.5)
    assert run.wait is None and run.conn.reason == "fault_reset" and run.sock.linger_reset


def test_close_after_t_seconds_is_a_fin(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("close:after_s=1", [b""], monkeypatch)
    run.throw(WaitTimeout(1.0), after_s=1.0)
    assert run.sock.shut_write and not run.sock.linger_reset
    run.run_until_done()
    assert run.conn.reason == "fault_close"


def test_idle_timeout_still_applies_before_a_late_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("close:after_s=1000", [], monkeypatch)
    assert isinstance(run.wait, Wait) and run.wait.timeout == IDLE_S
    run.throw(WaitTimeout(IDLE_S), after_s=IDLE_S)
    assert run.wait is None and run.conn.reason == "idle_timeout"


def test_hang_no_read_never_reads_and_ends_at_the_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("hang", [b"abc"], monkeypatch)
    assert isinstance(run.wait, Sleep) and run.wait.seconds == IDLE_S
    run.ready()
    assert run.wait is None and run.conn.reason == "fault_hang"
    assert run.sock.recv_sizes == [] and run.sock.sent == b""


def test_hang_no_echo_reads_and_drops_until_the_idle_timeout_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("hang:mode=no_echo", [b"abc", b"def"], monkeypatch)
    run.clock.now = 100.0
    run.ready()
    run.clock.now = 250.0
    run.ready()
    assert isinstance(run.wait, Wait) and run.wait.timeout == pytest.approx(IDLE_S - 250.0)  # talking keeps nothing
    run.throw(WaitTimeout(50.0), after_s=50.0)
    assert run.wait is None and run.conn.reason == "fault_hang"
    assert run.sock.sent == b"" and run.conn.bytes_in == 6


def test_shutdown_during_a_delay_still_echoes_what_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("delay:delay_ms=500", [b"abc", b""], monkeypatch)
    run.ready()
    assert isinstance(run.wait, Sleep)
    run.throw(Shutdown())
    run.run_until_done()
    assert bytes(run.sock.sent) == b"abc" and run.conn.reason == "shutdown" and run.sock.shut_write


def test_shutdown_ends_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("hang", [], monkeypatch)
    run.throw(Shutdown())
    assert run.wait is None and run.conn.reason == "shutdown"


def test_a_socket_error_propagates_to_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run("delay:delay_ms=1", [ConnectionResetError()], monkeypatch)
    with pytest.raises(ConnectionResetError):
        run.ready()
