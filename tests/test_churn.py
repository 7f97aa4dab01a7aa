"""Connection churn leaves nothing behind: 20,000 short connections with the default
idle timeout (300 s), then the closed ones must be forgotten, not queued until their
idle deadline (the first version kept ~931 B per closed connection for 300 s)."""

from __future__ import annotations

import gc
import socket
import threading
import tracemalloc

import pytest

from server.config import Config
from server.engine.connection import Connection
from server.engine.timers import COMPACT_MIN
from tests.conftest import ServerFactory
from tests.helpers import read_exactly

CHURN = 20_000
WARM_UP = 1_000


def _short_connections(address: tuple[str, int], count: int) -> None:
    for _ in range(count):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"hello")
            assert read_exactly(sock, 5) == b"hello"


def _timer_entries(server: object) -> int:
    return sum(loop.timer_entries() for loop in server._loops)  # type: ignore[attr-defined]


def _after_current_turn(server: object) -> None:
    """Return once every scheduler has run a callback queued now: the step that counted
    the last close (on its scheduler's thread) has then returned and ended its task."""
    loops = (server._acceptor_loop, *server._loops)  # type: ignore[attr-defined]
    for loop in loops:
        done = threading.Event()
        loop.call_soon_threadsafe(done.set)
        assert done.wait(10), f"{loop.name} did not take its turn"


@pytest.mark.slow
def test_closed_connections_are_forgotten_at_once(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    assert server.config.idle_timeout == Config().idle_timeout  # the default, 300 s
    address = server.server_address[:2]
    _short_connections(address, WARM_UP)
    recorder.wait_for(lambda e: server.stats.snapshot().closed == WARM_UP, timeout=30)
    recorder.events.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        _short_connections(address, CHURN)
        recorder.wait_for(lambda e: server.stats.snapshot().closed == WARM_UP + CHURN, timeout=60)
        _after_current_turn(server)
        recorder.events.clear()  # the test's own record of events is not the server's memory
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if "/server/" in stat.traceback[0].filename and stat.size_diff > 0
    )
    # 931 B per closed connection would be 18 MiB; allow a small constant, not per connection.
    assert grown < 256 * 1024, f"server memory grew {grown} B over {CHURN} closed connections"
    assert server.stats.snapshot().active == 0
    assert _timer_entries(server) <= COMPACT_MIN + 2  # no live task: only stale leftovers
    assert not [o for o in gc.get_objects() if isinstance(o, Connection)]
