"""SharedLimits (the global admission counter) and totals (snapshots summed across workers)."""

from __future__ import annotations

import multiprocessing
from typing import Any

from server.observe.stats import REJECT_MAX_CONNECTIONS, REJECT_PER_IP, Stats, StatsSnapshot
from server.observe.totals import WorkerRow, WorkersSnapshot, add, pack, total, unpack
from server.workers.shared_limits import IP_SLOTS, SharedLimits, ip_slot


def bound(limits: SharedLimits, row: int) -> SharedLimits:
    """A worker's view of the same table, owning ``row`` (in-process: the same memory)."""
    view = SharedLimits.__new__(SharedLimits)
    view.__setstate__(limits.__getstate__())
    view.bind(row)
    return view


def test_the_total_is_across_rows_and_a_release_frees_a_place() -> None:
    limits = SharedLimits(rows=3)
    a, b = bound(limits, limits.take_row() or 0), bound(limits, limits.take_row() or 0)
    assert [a.admit("10.0.0.1", 3, 10), b.admit("10.0.0.2", 3, 10), b.admit("10.0.0.3", 3, 10)] == [None] * 3
    assert a.admit("10.0.0.4", 3, 10) == REJECT_MAX_CONNECTIONS
    assert limits.total() == 3
    b.release("10.0.0.2")
    assert a.admit("10.0.0.4", 3, 10) is None


def test_per_address_counts_across_rows_and_collisions_share_a_budget() -> None:
    limits = SharedLimits(rows=2)
    a, b = bound(limits, 0), bound(limits, 1)
    assert a.admit("10.0.0.1", 100, 2) is None
    assert b.admit("10.0.0.1", 100, 2) is None
    assert a.admit("10.0.0.1", 100, 2) == REJECT_PER_IP
    assert b.admit("10.0.0.2", 100, 2) is None  # another address, another budget
    twin = next(
        f"10.1.{n // 256}.{n % 256}"
        for n in range(1, 70_000)
        if ip_slot(f"10.1.{n // 256}.{n % 256}") == ip_slot("10.0.0.1")
    )
    assert a.admit(twin, 100, 2) == REJECT_PER_IP  # a collision: stricter, never looser
    assert 0 <= ip_slot("::1") < IP_SLOTS


def test_reclaim_gives_back_a_dead_workers_places_and_its_row() -> None:
    limits = SharedLimits(rows=2)
    rows = [limits.take_row(), limits.take_row()]
    assert limits.take_row() is None and rows == [0, 1]
    dead = bound(limits, 1)
    for n in range(4):
        assert dead.admit(f"10.0.0.{n}", 5, 5) is None
    assert limits.reclaim(1) == 4
    assert limits.total() == 0 and limits.free_rows() == 1
    assert bound(limits, 0).admit("10.0.0.0", 5, 5) is None


def _admit_many(limits: SharedLimits, row: int, tries: int, results: Any) -> None:
    limits.bind(row)
    results.put(sum(limits.admit(f"10.0.{row}.{n}", 100, 1000) is None for n in range(tries)))


def test_exactly_the_limit_is_admitted_by_processes_racing_for_it() -> None:
    ctx = multiprocessing.get_context("spawn")
    limits = SharedLimits(rows=4, context=ctx)
    results = ctx.SimpleQueue()
    processes = [ctx.Process(target=_admit_many, args=(limits, row, 60, results)) for row in range(4)]
    for process in processes:
        process.start()
    admitted = [results.get() for _ in processes]
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    results.close()
    assert sum(admitted) == 100 and limits.total() == 100


def test_snapshots_travel_as_plain_data_and_add_up() -> None:
    one, two = Stats(), Stats()
    for stats, ip in ((one, "a"), (two, "b"), (two, "c")):
        assert stats.admit(ip, 10, 10) is None
    one.connection_closed("a", "eof", 5, 5, 10, 0.5)
    two.admit("b", 0, 10)  # a rejection
    a, b = unpack(pack(one.snapshot())), unpack(pack(two.snapshot()))
    summed = add(a, b)
    assert (summed.accepted, summed.active, summed.closed, summed.bytes_sent) == (3, 2, 1, 5)
    assert dict(summed.rejected) == {REJECT_MAX_CONNECTIONS: 1}
    assert dict(summed.closed_by_reason) == {"eof": 1}
    assert summed.duration_s.count == 1 and summed.duration_s.total == 0.5
    assert total([a, b]) == summed
    assert total([]) == StatsSnapshot()


def test_a_workers_snapshot_lists_its_rows() -> None:
    rows = (WorkerRow(0, 11, 1, 2, 7, 0), WorkerRow(1, 12, 1, 0, 3, 1))
    document = WorkersSnapshot.of(StatsSnapshot(accepted=10), rows, restarts=1).as_dict()
    assert document["accepted"] == 10 and document["restarts"] == 1
    assert [w["pid"] for w in document["workers"]] == [11, 12]


def test_proxy_admission_reserves_then_settles() -> None:
    limits = SharedLimits(rows=2)
    a, b = bound(limits, 0), bound(limits, 1)
    assert a.reserve(2) is None and b.reserve(2) is None
    assert a.reserve(2) == REJECT_MAX_CONNECTIONS  # places held for headers count
    assert a.admit_reserved("192.0.2.1", 1) is None
    assert b.admit_reserved("192.0.2.1", 1) == REJECT_PER_IP  # gives its place back
    assert limits.total() == 1
    assert b.reserve(2) is None
    b.unreserve()  # its header failed
    assert limits.total() == 1
    a.release("192.0.2.1")
    assert limits.total() == 0
