"""--workers N: what ps shows, the exact peak, one log line per event (written by the
workers' batches) whether or not /events is read, and connection ids unique per run.

Real processes: ``python3 -m server --workers 2`` and its JSON log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, address_of, wait_readable
from tests.test_workers import admin_get, open_echoing, round_trip, start, worker_pids

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
        served: set[int] = set()
        while 0 not in served:  # a connection served by worker 0: its loop-0 thread runs
            with open_echoing(server.address) as sock:
                served.add(server.wait_for("opened", peer=f"127.0.0.1:{sock.getsockname()[1]}")["worker"])
        assert comm(server.proc.pid) == "echo-supervisor"
        assert [comm(pids[0]), comm(pids[1])] == ["echo-worker 0", "echo-worker 1"]
        assert "echo loop-0" in thread_names(pids[0])  # the acceptors run on it (one loop)
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


def test_each_connection_is_logged_once_with_or_without_an_events_reader() -> None:
    server = start()
    try:
        worker_pids(server, 2)
        host, port = address_of(server.wait_for("listening"), "admin_address")
        for _ in range(20):  # no reader: the workers' own lines only
            assert round_trip(server.address) == b"ping"
        with socket.create_connection((host, port), timeout=10) as stream:
            stream.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = b""
            while b"\r\n\r\n" not in seen:
                seen += stream.recv(4096)
            made = 20
            # The workers hear of the reader a moment after it attaches: connect until
            # its first worker event arrives, then 20 more, every one of which it must get.
            while b'"event":"closed"' not in seen:
                made += 1
                assert round_trip(server.address) == b"ping"
                if wait_readable(stream, 0.05):
                    seen += stream.recv(65536)
            peers = []
            for _ in range(20):
                made += 1
                with open_echoing(server.address) as sock:
                    peers.append(f"127.0.0.1:{sock.getsockname()[1]}")
            while not all(peer.encode() in seen for peer in peers):
                chunk = stream.recv(65536)
                assert chunk, "the stream ended"
                seen += chunk
        server.signal(signal.SIGTERM)
        assert server.finish(15) == 0
    finally:
        server.stop()
    opened = [r for r in server.seen if r.get("event") == "opened"]
    closed = [r for r in server.seen if r.get("event") == "closed"]
    assert len(opened) == len(closed) == made, (len(opened), len(closed), made)  # none twice, none lost
    assert {r["worker"] for r in opened} <= {0, 1} and all(r["peer"] for r in opened)
    assert {r["peer"] for r in closed} >= set(peers)


def serve_some(server: ServerProcess, count: int) -> None:
    """``count`` connections, one at a time; returns once every close is logged (a
    worker's lines go up in batches: a kill right after could lose its last ones)."""
    peers = []
    for _ in range(count):
        with open_echoing(server.address) as sock:
            peers.append(f"127.0.0.1:{sock.getsockname()[1]}")
    for peer in peers:
        server.wait_for("closed", peer=peer)


def test_connection_ids_are_unique_across_workers_restarts_and_reloads() -> None:
    server = start()
    try:
        pids = worker_pids(server, 2)
        serve_some(server, 20)
        os.kill(pids[0], signal.SIGKILL)
        server.wait_for("worker_ready", worker=0, restarts=1, timeout=10)
        serve_some(server, 20)
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", generation=2, timeout=20)
        serve_some(server, 20)
        server.signal(signal.SIGTERM)
        assert server.finish(15) == 0
    finally:
        server.stop()
    opened = [r for r in server.seen if r.get("event") == "opened"]
    ids = [r["conn"] for r in opened]
    assert len(ids) == 60 and len(set(ids)) == 60, sorted(ids)
    assert len({(r["worker"], r.get("pid")) for r in opened}) >= 2
    closed = {r["conn"] for r in server.seen if r.get("event") == "closed"}
    assert closed == set(ids)  # each connection's lines join on its id
