"""--workers N: what ps shows, the exact peak, and connection ids unique per server run.

Real processes: ``python3 -m server --workers 2`` and its JSON log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.helpers import ServerProcess
from tests.test_workers import admin_get, open_echoing, start, worker_pids

pytestmark = pytest.mark.slow


def comm(pid: int, thread: int | None = None) -> str:
    path = f"/proc/{pid}/comm" if thread is None else f"/proc/{pid}/task/{thread}/comm"
    return Path(path).read_text().rstrip("\n")


def thread_names(pid: int) -> set[str]:
    return {comm(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def stats(server: ServerProcess) -> dict[str, object]:
    status, body = admin_get(server, "/stats")
    assert status == 200
    document: dict[str, object] = json.loads(body)
    return document


def test_ps_shows_the_supervisor_and_each_worker_by_name() -> None:
    server = start()
    try:
        pids = worker_pids(server, 2)
        assert comm(server.proc.pid) == "echo-supervisor"
        assert [comm(pids[0]), comm(pids[1])] == ["echo-worker 0", "echo-worker 1"]
        assert {"echo loop-0", "echo acceptor"} <= thread_names(pids[0])
        server.signal(signal.SIGTERM)
        assert server.finish(15) == 0
    finally:
        server.stop()


def test_peak_active_is_exact_across_workers() -> None:
    server = start()
    held: list[socket.socket] = []
    try:
        worker_pids(server, 2)
        for _ in range(3):  # short, one at a time: a sample would miss them
            with open_echoing(server.address) as sock:
                peer = f"127.0.0.1:{sock.getsockname()[1]}"
            server.wait_for("closed", peer=peer)
        assert stats(server)["peak_active"] == 1
        held = [open_echoing(server.address) for _ in range(4)]
        for sock in held:
            sock.close()
        assert stats(server)["peak_active"] == 4
        server.signal(signal.SIGTERM)
        assert server.finish(15) == 0
    finally:
        for sock in held:
            sock.close()
        server.stop()
    assert [r["peak_active"] for r in server.seen if r.get("event") == "stopped"] == [4]
