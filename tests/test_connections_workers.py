"""GET /connections under --workers 2: the supervisor asks both workers and merges their
connections; a stopped worker is named in ``unanswered`` within the deadline, never
waited for; /connections/ID?worker=N picks a worker (ids are per worker)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from server.observe.connections import ASK_TIMEOUT_S
from tests.helpers import ServerProcess
from tests.test_workers import admin_get, cleanup, start, worker_pids  # noqa: F401  (cleanup: a fixture)

pytestmark = pytest.mark.slow


def _banner(sock: socket.socket) -> tuple[int, int]:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(64)
        assert chunk, "closed before the banner"
        line += chunk
    worker, conn = line.split()
    return int(worker), int(conn)


@pytest.fixture
def held(cleanup: list[ServerProcess]) -> Iterator[tuple[ServerProcess, dict[tuple[int, int], socket.socket]]]:  # noqa: F811
    """A two-worker server and connections until each worker holds three: (worker, conn) -> socket."""
    server = start("--banner", "{worker} {conn}")
    cleanup.append(server)
    worker_pids(server, 2)
    with ExitStack() as stack:
        socks: dict[tuple[int, int], socket.socket] = {}
        for _ in range(200):
            sock = stack.enter_context(socket.create_connection(server.address, timeout=10))
            socks[_banner(sock)] = sock
            if all(sum(1 for worker, _ in socks if worker == w) >= 3 for w in (0, 1)):
                break
        yield server, socks


def test_both_workers_connections_are_listed(held: tuple[ServerProcess, dict[tuple[int, int], socket.socket]]) -> None:
    server, socks = held
    status, body = admin_get(server, "/connections?per_page=1000")
    assert status == 200, body
    document = json.loads(body)
    assert document["total"] == len(socks) and document["unanswered"] == []
    listed = {(row["worker"], row["conn"]) for row in document["connections"]}
    assert listed == set(socks) and {worker for worker, _ in listed} == {0, 1}
    assert all(row["rtt_us"] is not None and row["rtt_us"] > 0 for row in document["connections"])
    ages = [row["age_s"] for row in document["connections"]]
    assert ages == sorted(ages, reverse=True)
    worker, conn = next(iter(socks))
    status, body = admin_get(server, f"/connections/{conn}?worker={worker}")
    assert status == 200, body
    facts = json.loads(body)
    assert (facts["worker"], facts["conn"]) == (worker, conn)
    assert facts["peer"] == f"127.0.0.1:{socks[(worker, conn)].getsockname()[1]}"
    assert admin_get(server, f"/connections/{conn}?worker=7")[0] == 404
    assert admin_get(server, f"/connections/{conn}?bogus=1")[0] == 400


def test_a_stopped_worker_is_named_not_waited_for(
    held: tuple[ServerProcess, dict[tuple[int, int], socket.socket]],
) -> None:
    server, socks = held
    pids = worker_pids(server, 2)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        began = time.monotonic()
        status, body = admin_get(server, "/connections?per_page=1000")
        took = time.monotonic() - began
    finally:
        os.kill(pids[1], signal.SIGCONT)
    assert status == 200, body
    document = json.loads(body)
    assert document["unanswered"] == ["worker-1"]
    assert {row["worker"] for row in document["connections"]} == {0}
    assert document["total"] == sum(1 for worker, _ in socks if worker == 0)
    assert took < 2 * ASK_TIMEOUT_S + 1.0  # one deadline per round (rows, then rtt), never more
    status, body = admin_get(server, "/connections?per_page=1000")  # answering again
    assert status == 200 and json.loads(body)["total"] == len(socks)
