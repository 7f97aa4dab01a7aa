"""SharedLimits survives the death of a worker at every instruction of every method.

A child process binds a row and calls one method with a tracer that counts the
bytecode instructions it executes in shared_limits.py and ``os._exit``s at the n-th:
n = 1, 2, ... until the method returns before n (the child then exits 0). After each
death the parent reclaims the dead row (as the supervisor does) and checks that another
row still admits at once (no BUSY, no contention: the lock was not lost) and that the
table holds exactly what the survivor holds (nothing inconsistent is left behind).
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

from server.workers.shared_limits import BUSY, SharedLimits
from tests.dying_worker import DIED, FINISHED, LIMIT, die_at, hold_and_stop

SURVIVOR_ADMITS = 50


def _survivor_admits_at_full_speed(limits: SharedLimits) -> None:
    survivor = SharedLimits.__new__(SharedLimits)
    survivor.__setstate__(limits.__getstate__())
    survivor.bind(0)
    started = time.perf_counter()
    answers = [survivor.admit(f"10.8.0.{n}", LIMIT, LIMIT) for n in range(SURVIVOR_ADMITS)]
    elapsed = time.perf_counter() - started
    assert BUSY not in answers and survivor.contended == 0
    assert answers == [None] * SURVIVOR_ADMITS
    assert elapsed < 0.5, f"{SURVIVOR_ADMITS} admissions took {elapsed:.3f} s"
    assert limits.total() == SURVIVOR_ADMITS
    for n in range(SURVIVOR_ADMITS):
        survivor.release(f"10.8.0.{n}")
    assert limits.total() == 0


@pytest.mark.parametrize("method", ["admit", "reserve", "admit_reserved", "unreserve", "release", "next_id"])
def test_a_worker_killed_at_any_instruction_never_wedges_admission(method: str) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.dying_worker"])  # if this starts the forkserver
    limits = SharedLimits(rows=2, context=ctx)
    row = 1
    deaths = 0
    for instruction in range(1, 10_000):
        child = ctx.Process(target=die_at, args=(limits, row, method, instruction))
        child.start()
        child.join(10)
        assert child.exitcode in (DIED, FINISHED), f"{method} at instruction {instruction}: {child.exitcode}"
        limits.reclaim(row)
        _survivor_admits_at_full_speed(limits)
        if child.exitcode == FINISHED:
            break
        deaths += 1
    assert deaths > 10, "the tracer never reached the method's instructions"


def test_a_stopped_holder_costs_a_bounded_busy_answer_and_its_death_frees_the_lock() -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.dying_worker"])
    limits = SharedLimits(rows=2, context=ctx)
    survivor = SharedLimits.__new__(SharedLimits)
    survivor.__setstate__(limits.__getstate__())
    survivor.bind(0)
    reader, writer = ctx.Pipe(duplex=False)
    holder = ctx.Process(target=hold_and_stop, args=(limits, 1, writer))
    holder.start()
    writer.close()
    try:
        assert reader.poll(10) and reader.recv() == b"held"
        started = time.perf_counter()
        assert survivor.admit("10.8.0.1", LIMIT, LIMIT) == BUSY
        assert time.perf_counter() - started < 0.5  # CONTENDED_S, plus a loaded machine's noise
        assert survivor.contended == 1
    finally:
        holder.kill()
        holder.join(10)
        reader.close()
    assert survivor.admit("10.8.0.1", LIMIT, LIMIT) is None  # the kernel released it
