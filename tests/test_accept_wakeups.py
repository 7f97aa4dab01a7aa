"""ACCEPT (EPOLLEXCLUSIVE): one wake-up per new connection, however many processes wait.

Counted, not timed: the processes' voluntary context switches per accepted connection
(loadtest/wakeups.py; ``python3 -m loadtest.wakeups`` prints N = 2 and N = 8).
"""

from __future__ import annotations

import select

import pytest

from loadtest.wakeups import measure

pytestmark = pytest.mark.skipif(not hasattr(select, "EPOLLEXCLUSIVE"), reason="no EPOLLEXCLUSIVE (Linux only)")


def test_exclusive_waits_wake_one_process_per_connection_where_plain_ones_wake_all() -> None:
    herd = measure(workers=4, connections=200, exclusive=False)
    exclusive = measure(workers=4, connections=200, exclusive=True)
    assert herd.accepted == exclusive.accepted == 200
    assert exclusive.per_accept < 1.5, exclusive
    assert min(exclusive.spread) >= 5, exclusive  # idle processes take turns, roughly
    assert herd.per_accept > 2.5, herd  # what it saves: without it, all four wake
