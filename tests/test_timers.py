"""Deadlines against a reference model: thousands of seeded random schedules, fake clock.

Each schedule spawns tasks on a real Scheduler (socketpairs, a fake clock), and then
interleaves activity (a byte that also picks the task's next timeout), closes, and
clock steps. The model is the definition: a task's deadline is its last activity plus
its current timeout, and it must fire in the first loop turn at or after that time,
never before and never later. Every fire time is checked, and so is the heap's size.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from server.engine.scheduler import Scheduler
from server.engine.timers import COMPACT_MIN, Deadlines
from server.engine.waits import READ, Shutdown, TaskGen, Wait, WaitTimeout
from tests.helpers import FakeClock

# What a byte sent to a task means: its next wait's timeout (None: no deadline), or end.
TIMEOUTS: dict[bytes, float | None] = {b"a": 10.0, b"b": 3.0, b"c": 0.5, b"n": None}
END = b"x"
SCHEDULES = 1_000
STEPS = 100


@dataclass
class Model:
    last_activity: float
    timeout: float | None

    def due(self) -> float | None:
        return None if self.timeout is None else self.last_activity + self.timeout


def waiter(
    sock: socket.socket, name: int, timeout: float | None, fired: list[tuple[int, float]], clock: FakeClock
) -> TaskGen:
    while True:
        try:
            yield Wait(READ, timeout)
        except WaitTimeout:
            fired.append((name, clock.now))
            continue
        except Shutdown:
            return
        data = sock.recv(1)
        if data == END or not data:
            return
        timeout = TIMEOUTS[data]


def run_schedule(seed: int) -> int:
    rng = random.Random(seed)
    clock = FakeClock()
    scheduler = Scheduler("model", buffer_size=0, clock=clock)
    fired: list[tuple[int, float]] = []
    models: dict[int, Model] = {}
    peers: dict[int, socket.socket] = {}
    checked = 0
    try:
        for step in range(STEPS):
            action = rng.random()
            pending_activity: dict[int, float | None] = {}
            ended: set[int] = set()
            if action < 0.2 or not models:
                name = step
                ours, peer = socket.socketpair()
                ours.setblocking(False)
                timeout = rng.choice(list(TIMEOUTS.values()))
                peers[name] = peer
                scheduler.spawn(waiter(ours, name, timeout, fired, clock), ours)
                models[name] = Model(clock.now, timeout)
            elif action < 0.5:
                name = rng.choice(list(models))
                key = rng.choice(list(TIMEOUTS))
                peers[name].send(key)
                pending_activity[name] = TIMEOUTS[key]
            elif action < 0.6:
                name = rng.choice(list(models))
                peers[name].send(END)
                ended.add(name)
            else:
                clock.now += rng.choice([0.1, 0.4, 0.5, 1.0, 2.5, 3.0, 7.0, 10.0, rng.uniform(0, 12)])
            fired.clear()
            scheduler.run_once(block=False)
            now = clock.now
            # The model's turn: activity first (it resets the wait), then deadlines.
            for name, timeout in pending_activity.items():
                models[name] = Model(now, timeout)
            for name in ended:
                del models[name]
                peers.pop(name).close()
            expected = sorted(n for n, m in models.items() if (due := m.due()) is not None and due <= now)
            assert sorted(n for n, _ in fired) == expected, (seed, step, now, fired, expected)
            for name in expected:  # a fired task waits again from this turn
                models[name] = Model(now, models[name].timeout)
            checked += len(fired)
            live = sum(1 for m in models.values() if m.timeout is not None)
            assert scheduler.timer_entries() <= 2 * live + COMPACT_MIN + 2, (seed, step)
    finally:
        scheduler.request_stop(clock.now, clock.now)
        scheduler.run()
        for peer in peers.values():
            peer.close()
    return checked


def test_every_deadline_fires_in_the_first_turn_it_is_due_across_random_schedules() -> None:
    fires = sum(run_schedule(seed) for seed in range(SCHEDULES))
    assert fires > SCHEDULES  # the schedules did exercise firing, many times


def test_a_shorter_wait_after_a_longer_one_fires_at_its_own_time() -> None:
    """The issue's case, and its mirror: an earlier deadline must not hide behind a later one."""
    clock = FakeClock()
    scheduler = Scheduler("model", buffer_size=0, clock=clock)
    fired: list[tuple[int, float]] = []
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    try:
        start = clock.now
        scheduler.spawn(waiter(a, 1, 10.0, fired, clock), a)  # A: deadline start+10
        clock.now = start + 1
        a_peer.send(b"a")  # A active at t=1: deadline start+11
        scheduler.run_once(block=False)
        clock.now = start + 9
        scheduler.run_once(block=False)
        scheduler.spawn(waiter(b, 2, 10.0, fired, clock), b)  # B: deadline start+19
        clock.now = start + 10  # A's first deadline: it was active since, so not yet
        scheduler.run_once(block=False)
        assert fired == []
        clock.now = start + 11
        scheduler.run_once(block=False)
        assert fired == [(1, start + 11)]
    finally:
        scheduler.request_stop(clock.now, clock.now)
        scheduler.run()
        a_peer.close()
        b_peer.close()


def test_closed_tasks_leave_at_most_a_compaction_s_worth_of_entries() -> None:
    clock = FakeClock()
    scheduler = Scheduler("model", buffer_size=0, clock=clock)
    fired: list[tuple[int, float]] = []
    keep, keep_peer = socket.socketpair()
    try:
        scheduler.spawn(waiter(keep, 0, 300.0, fired, clock), keep)
        for name in range(1, 5_001):
            ours, peer = socket.socketpair()
            with peer:
                task = scheduler.spawn(waiter(ours, name, 300.0, fired, clock), ours)
                peer.send(END)
                scheduler.run_once(block=False)
            assert task.done and task.sock is None and task.state is None
        assert scheduler.timer_entries() <= 2 + COMPACT_MIN + 1
        assert fired == []
    finally:
        scheduler.request_stop(clock.now, clock.now)
        scheduler.run()
        keep_peer.close()


class Entry:
    """A bare Timed for the Deadlines heap alone."""

    def __init__(self, due: float | None) -> None:
        self.armed: float | None = None
        self.armed_seq = 0
        self.deadline = due

    def due(self) -> float | None:
        return self.deadline


def test_an_entry_left_behind_stays_stale_even_if_re_armed_at_its_time() -> None:
    deadlines: Deadlines[Entry] = Deadlines()
    task = Entry(10.0)
    deadlines.arm(task, 10.0)
    task.deadline = 5.0
    deadlines.arm(task, 5.0)  # an earlier wait: the 10.0 entry is stale now
    assert deadlines.stale == 1
    assert list(deadlines.pop_due(5.0)) == [task]  # fires, and leaves no live entry
    task.deadline = 10.0
    deadlines.arm(task, 10.0)  # armed again, at the very time of the stale entry
    assert list(deadlines.pop_due(10.0)) == [task]  # fires once, not twice
    assert deadlines.stale == 0 and len(deadlines) == 0
