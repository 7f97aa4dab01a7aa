"""Scheduler logic with an injected fake clock: no sleeps, no real time."""

from __future__ import annotations

import socket

import pytest

from server.engine.scheduler import Scheduler
from server.engine.waits import READ, Shutdown, Sleep, TaskGen, Wait, WaitTimeout
from tests.helpers import FakeClock


def reader(log: list[str], timeout: float) -> TaskGen:
    wait = Wait(READ, timeout)
    while True:
        try:
            yield wait
        except WaitTimeout:
            log.append("timeout")
            return
        except Shutdown:
            log.append("shutdown")
            return
        log.append("readable")


def test_wait_times_out_at_its_deadline(scheduler: Scheduler, clock: FakeClock) -> None:
    left, right = socket.socketpair()
    with right:
        log: list[str] = []
        scheduler.spawn(reader(log, 5.0), left)
        clock.now += 4.9
        scheduler.run_once(block=False)
        assert log == []
        clock.now += 0.2
        scheduler.run_once(block=False)
        assert log == ["timeout"]
    assert left.fileno() == -1  # the scheduler closed the task's socket


def test_activity_pushes_the_deadline_back(scheduler: Scheduler, clock: FakeClock) -> None:
    left, right = socket.socketpair()
    with right:
        log: list[str] = []
        scheduler.spawn(reader(log, 5.0), left)
        clock.now += 4.0
        right.send(b"x")
        scheduler.run_once(block=False)  # readable at t+4: the wait restarts
        assert log.count("readable") >= 1
        left.recv(1)  # drain, as a real task would
        clock.now += 4.0  # t+8: past the first deadline, not the second
        scheduler.run_once(block=False)
        assert "timeout" not in log
        clock.now += 1.5  # t+9.5: 5.5 s after the last activity
        scheduler.run_once(block=False)
        assert log[-1] == "timeout"


def test_sleep_resumes_after_its_time(scheduler: Scheduler, clock: FakeClock) -> None:
    ticks: list[float] = []

    def sleeper() -> TaskGen:
        while True:
            yield Sleep(2.0)
            ticks.append(clock.now)

    scheduler.spawn(sleeper(), daemon=True)
    clock.now += 1.9
    scheduler.run_once(block=False)
    assert ticks == []
    clock.now += 0.2
    scheduler.run_once(block=False)
    assert ticks == [clock.now]


def test_stop_throws_shutdown_at_grace_and_resets_at_abort(scheduler: Scheduler, clock: FakeClock) -> None:
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with a_peer, b_peer:
        polite: list[str] = []
        scheduler.spawn(reader(polite, 100.0), a)

        def stubborn() -> TaskGen:
            while True:
                try:
                    yield Wait(READ, 100.0)
                except Shutdown:
                    continue  # ignores it: must be ended at the abort deadline

        scheduler.spawn(stubborn(), b)
        scheduler.request_stop(clock.now + 1, clock.now + 2)
        assert scheduler.run_once(block=False)
        assert polite == []
        clock.now += 1.0
        assert scheduler.run_once(block=False)  # grace: the stubborn task is still there
        assert polite == ["shutdown"]
        clock.now += 1.0
        assert not scheduler.run_once(block=False)  # abort: nothing left
        assert b.fileno() == -1


def test_daemon_tasks_end_when_stop_is_requested(scheduler: Scheduler, clock: FakeClock) -> None:
    ended: list[bool] = []

    def forever() -> TaskGen:
        try:
            while True:
                yield Sleep(1000)
        finally:
            ended.append(True)

    scheduler.spawn(forever(), daemon=True)
    scheduler.request_stop(clock.now + 50, clock.now + 60)
    assert not scheduler.run_once(block=False)
    assert ended == [True]


def test_a_failing_task_is_reported_and_the_rest_go_on(
    scheduler: Scheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> TaskGen:
        yield Sleep(1)
        raise RuntimeError("bug")

    ticks: list[int] = []

    def healthy() -> TaskGen:
        while True:
            yield Sleep(1)
            ticks.append(1)

    scheduler.spawn(broken())
    scheduler.spawn(healthy(), daemon=True)
    clock.now += 1
    scheduler.run_once(block=False)
    assert ticks == [1]
    assert any("bug" in (r.exc_text or "") or "failed" in r.getMessage() for r in caplog.records)


def test_call_soon_threadsafe_runs_on_the_next_turn(scheduler: Scheduler) -> None:
    calls: list[int] = []
    scheduler.call_soon_threadsafe(calls.append, 7)
    scheduler.run_once(block=False)
    assert calls == [7]


def test_the_same_wait_after_a_sleep_is_registered_again(scheduler: Scheduler, clock: FakeClock) -> None:
    """A Wait yielded again is taken on without settling, unless something in between
    (here a Sleep, which unregisters the socket) changed what the scheduler holds."""
    left, right = socket.socketpair()
    log: list[str] = []
    wait = Wait(READ, 5.0)

    def napper() -> TaskGen:
        while True:
            try:
                yield wait
            except WaitTimeout:
                log.append("timeout")
                return
            if not left.recv(16):
                return
            log.append("readable")
            yield Sleep(1.0)
            log.append("slept")

    with right:
        scheduler.spawn(napper(), left)
        right.send(b"x")
        scheduler.run_once(block=False)
        assert log == ["readable"]
        clock.now += 1.0
        scheduler.run_once(block=False)  # the Sleep ends; the same Wait again
        assert log == ["readable", "slept"]
        right.send(b"y")
        scheduler.run_once(block=False)
        assert log == ["readable", "slept", "readable"]  # heard: registered again
        clock.now += 1.0
        scheduler.run_once(block=False)
        clock.now += 4.9  # 4.9 s into the wait that began after the second Sleep
        scheduler.run_once(block=False)
        assert log[-1] == "slept"
        clock.now += 0.2
        scheduler.run_once(block=False)
        assert log[-1] == "timeout"
