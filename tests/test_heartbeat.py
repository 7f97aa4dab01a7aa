"""Liveness: a scheduler's heartbeat, /healthz naming a stalled loop, the supervisor's
view of its workers' heartbeats, and a scheduler thread that never waits for the log."""

from __future__ import annotations

import http.client
import io
import multiprocessing
import threading
import time
from types import SimpleNamespace

from server.engine.heartbeat import most_stalled, stall_problem
from server.engine.scheduler import MAX_IDLE_S, Scheduler
from server.engine.waits import Sleep, TaskGen
from server.observe.events import event
from server.observe.logger import LIFECYCLE_WAIT_S, LogActor
from server.observe.stats import Stats
from server.workers.worker_counts import MONITOR_IDLE_S, WorkerCounts
from server.workers.worker_process import WorkerProcess
from tests.conftest import ServerFactory
from tests.helpers import FakeClock


def test_an_idle_loop_still_turns_every_max_idle_s() -> None:
    clock = FakeClock()
    loop = Scheduler("idle", buffer_size=1024, clock=clock)
    try:
        assert loop._next_timeout() == MAX_IDLE_S  # nothing due: it still wakes up
        loop.run_once(block=False)
        assert loop._next_timeout() == MAX_IDLE_S
    finally:
        loop.request_stop(clock.now, clock.now)
        loop.run()


def test_a_wedged_loop_stalls_and_a_turn_clears_it() -> None:
    clock = FakeClock()
    loop = Scheduler("loop-7", buffer_size=1024, clock=clock)
    assert loop.stalled_for() == 0.0  # not running: nothing to say
    entered, release = threading.Event(), threading.Event()

    def wedge() -> None:  # a call that never yields, on the loop's own thread
        entered.set()
        release.wait(30)

    thread = threading.Thread(target=loop.run, name="loop-7")
    thread.start()
    try:
        loop.call_soon_threadsafe(wedge)
        assert entered.wait(10)
        clock.now += 7.5
        assert loop.stalled_for() == 7.5 - MAX_IDLE_S
        assert most_stalled([None, loop]) == ("loop-7", 7.5 - MAX_IDLE_S)
        assert stall_problem("loop-7", 6.5, 5.0) == "loop-7 has not turned for 6.5 s"
        assert stall_problem("loop-7", 4.9, 5.0) is None and stall_problem("loop-7", 99, 0) is None
        turned = threading.Event()

        def next_turn() -> TaskGen:  # due after the wedged turn's time: runs in a later turn
            yield Sleep(0.001)
            turned.set()

        release.set()
        loop.call_soon_threadsafe(lambda: loop.spawn(next_turn()))
        assert turned.wait(10)
        assert loop.stalled_for() == 0.0  # it turned at the clock's time
    finally:
        release.set()
        loop.request_stop(clock.now, clock.now)
        thread.join(10)
    assert not thread.is_alive() and loop.stalled_for() == 0.0


def healthz(address: tuple[str, int]) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_healthz_names_a_wedged_loop_within_the_timeout_and_recovers(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0, heartbeat_timeout=0.5)
    assert server.admin is not None
    admin = server.admin.address[:2]
    assert healthz(admin) == (200, "ok\n")
    entered, release = threading.Event(), threading.Event()

    def wedge() -> None:
        entered.set()
        release.wait(30)

    server._loops[0].call_soon_threadsafe(wedge)
    try:
        assert entered.wait(10)
        wedged_at = time.monotonic()
        while True:  # the answer turns when the stall passes the timeout (plus the idle second)
            status, body = healthz(admin)
            if status != 200 or time.monotonic() - wedged_at > 10:
                break
        took = time.monotonic() - wedged_at
        assert status == 503 and body.startswith("stalled: loop-0 has not turned for "), body
        assert 0.5 + MAX_IDLE_S - 0.2 < took < 0.5 + MAX_IDLE_S + 1.0, took
    finally:
        release.set()
    turned = threading.Event()

    def next_turn() -> TaskGen:  # due just after the wedged turn's time: a later turn
        yield Sleep(0.001)
        turned.set()

    loop = server._loops[0]
    loop.call_soon_threadsafe(lambda: loop.spawn(next_turn()))
    assert turned.wait(10)
    assert healthz(admin) == (200, "ok\n")


def test_the_supervisor_names_the_worst_stall_of_its_workers() -> None:
    counts = WorkerCounts()
    now = time.monotonic()
    counts.turned(now)
    counts.started(0, 100, 1)
    counts.started(1, 101, 1)
    counts.heard(100, now, "loop-0", 0.0)
    counts.heard(101, now, "loop-0", 0.0)
    assert counts.stalled(5.0, now) is None
    counts.heard(101, now, "loop-0", 6.0)
    assert counts.stalled(5.0, now) == "worker 1: loop-0 has not turned for 6.0 s"
    assert counts.stalled(0.0, now) is None  # off
    assert counts.stalled(5.0, now + 7.0) == "worker 0 has sent nothing for 7.0 s"  # the worst wins
    counts.draining(100)
    counts.draining(101)  # draining workers send nothing: not a stall
    assert counts.stalled(5.0, now + 5.0) is None
    assert counts.stalled(5.0, now + MONITOR_IDLE_S + 6.0) == "the supervisor has not turned for 6.0 s"


def test_ready_never_waits_for_room_in_the_log_as_the_other_lifecycle_events_do() -> None:
    stats = Stats()
    actor = LogActor(stats, mailbox_size=1, stream=io.StringIO())  # not started: the mailbox stays full
    assert actor.send(event("opened", conn_id=1))
    started = time.monotonic()
    assert not actor.send(event("ready", address="127.0.0.1:7"))  # the acceptor's thread: no wait
    assert time.monotonic() - started < LIFECYCLE_WAIT_S / 2
    assert stats.log_events_dropped_total() == 1
    started = time.monotonic()
    assert not actor.send(event("stopping"))  # the main thread's: waits for room, then drops
    assert time.monotonic() - started >= LIFECYCLE_WAIT_S * 0.9


def test_a_worker_is_hung_when_its_loop_stalls_it_falls_silent_or_outlives_its_drain() -> None:
    up_r, up_w = multiprocessing.get_context("spawn").Pipe(duplex=False)
    down_r, down_w = multiprocessing.get_context("spawn").Pipe(duplex=False)
    try:
        worker = WorkerProcess(SimpleNamespace(pid=4242, sentinel=-1), 0, 1, 0, up_r, down_w)
        now = worker.heard_at
        assert worker.hung(now + 9.0, 10.0, 3.0) is None
        assert worker.hung(now + 10.5, 10.0, 3.0) == "sent nothing for 10.5 s"
        assert worker.hung(now + 99.0, 0.0, 3.0) is None  # off
        worker.stalled_loop, worker.stalled_s = "loop-1", 11.0
        assert worker.hung(now, 10.0, 3.0) == "loop-1 has not turned for 11.0 s"
        worker.drain()  # from now on it sends nothing: only its drain's bound counts
        drained = worker.drained_at or 0.0
        assert worker.hung(drained + 12.9, 10.0, 3.0) is None
        assert worker.hung(drained + 13.5, 10.0, 3.0) == "still draining 13.5 s after it was asked"
        assert worker.hung(drained + 99.0, 10.0, None) is None  # the stop kills it itself
    finally:
        for end in (up_r, up_w, down_r, down_w):
            end.close()
