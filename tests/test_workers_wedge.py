"""A worker that stops (SIGSTOP) or wedges never stops the supervisor.

Real processes and signals. The worker under test is frozen with SIGSTOP in the middle
of a frame on its up pipe: the frame's header, announcing more than a pipe buffer, and
part of its body are written into that worker's own pipe (opened through /proc, as the
worker's own end) before the stop, so the supervisor holds half a frame from a writer
that will never finish it.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest

from tests.helpers import ServerProcess, read_exactly
from tests.test_workers import admin_get, open_echoing, round_trip, start, worker_pids

pytestmark = pytest.mark.slow

O_ACCMODE = 0o3


def _pipes(pid: int, access: int, *, nonblocking: bool = False) -> dict[str, int]:
    """pipe inode -> fd, for ``pid``'s pipe ends (fds > 2) opened with ``access``
    (and O_NONBLOCK if ``nonblocking``)."""
    found: dict[str, int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
        except OSError:
            continue
        wanted = flags & O_ACCMODE == access and (not nonblocking or flags & os.O_NONBLOCK)
        if fd > 2 and target.startswith("pipe:") and wanted:
            found[target] = fd
    return found


def uplink_path(supervisor: int, worker: int) -> str:
    """/proc path of the worker's end of its up pipe: the pipe it writes and the
    supervisor reads without blocking (its exit sentinel, the other pipe between them,
    the supervisor only polls)."""
    ends = _pipes(worker, os.O_WRONLY)
    shared = set(ends) & set(_pipes(supervisor, os.O_RDONLY, nonblocking=True))
    assert len(shared) == 1, shared
    return f"/proc/{worker}/fd/{ends[shared.pop()]}"


def freeze_mid_frame(supervisor: int, worker: int) -> None:
    os.kill(worker, signal.SIGSTOP)
    with open(uplink_path(supervisor, worker), "wb", buffering=0) as pipe:
        pipe.write(struct.pack("!i", 1 << 20) + b"\x80" * 4096)  # 1 MiB announced, 4 KiB sent


def kill_all(pids: list[int]) -> None:
    """Frozen workers hold the server's stdout too: kill them before closing it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_a_worker_frozen_mid_frame_delays_no_restart_reload_or_stop() -> None:
    server: ServerProcess = start("--worker-timeout", "600", workers=3)
    frozen: list[int] = []
    try:
        pids = worker_pids(server, 3)
        frozen.append(pids[0])
        freeze_mid_frame(server.proc.pid, pids[0])
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        server.wait_for("worker_exited", pid=pids[1], timeout=5)
        replacement = server.wait_for("worker_ready", worker=1, restarts=1, timeout=5)
        assert time.monotonic() - killed_at < 1.5 and replacement["restart_s"] < 1.0
        assert round_trip(server.address) == b"ping"
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", generation=2, timeout=15)
        assert round_trip(server.address) == b"ping"
        stopped_at = time.monotonic()
        server.signal(signal.SIGTERM)
        # The bound: shutdown_timeout (2 s) + the final flush + the kill margin + reaping.
        assert server.finish(15) == 0
        took = time.monotonic() - stopped_at
    finally:
        kill_all(frozen)
        server.stop()
    assert took < 2.0 + 1.0 + 0.3 + 1.0 + 1.0, took
    exited = {r["pid"]: r for r in server.seen if r.get("event") == "worker_exited"}
    assert exited[pids[0]]["status"] == "killed by SIGKILL"


def test_a_stopped_worker_fails_healthz_then_is_replaced_and_the_others_serve_on() -> None:
    server = start("--heartbeat-timeout", "0.5", "--worker-timeout", "1.5")
    frozen: list[int] = []
    held: dict[int, list[socket.socket]] = {0: [], 1: []}
    try:
        pids = worker_pids(server, 2)
        while len(held[1]) < 3:  # connections on the worker that stays
            sock = open_echoing(server.address)
            worker = server.wait_for("opened", peer=f"127.0.0.1:{sock.getsockname()[1]}")["worker"]
            held[worker].append(sock)
        frozen.append(pids[0])
        os.kill(pids[0], signal.SIGSTOP)
        stopped_at = time.monotonic()
        while True:  # /healthz turns once the silence passes --heartbeat-timeout
            status, body = admin_get(server, "/healthz")
            if status != 200 or time.monotonic() - stopped_at > 10:
                break
        assert status == 503 and body.startswith("stalled: worker 0 has sent nothing for "), body
        hung = server.wait_for("worker_hung", pid=pids[0], timeout=10)
        exited = server.wait_for("worker_exited", pid=pids[0], timeout=10)
        replacement = server.wait_for("worker_ready", worker=0, restarts=1, timeout=10)
        replaced_after = time.monotonic() - stopped_at
        for sock in held[1]:
            sock.sendall(b"still")
            assert read_exactly(sock, 5) == b"still"
        assert round_trip(server.address) == b"ping"
        assert admin_get(server, "/healthz") == (200, "ok\n")
        server.signal(signal.SIGTERM)
        assert server.finish(15) == 0
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()
        kill_all(frozen)
        server.stop()
    assert hung["level"] == "error" and hung["reason"].startswith("sent nothing for ")
    assert exited["status"] == "killed by SIGKILL"  # its SIGABRT waited behind the stop
    assert replacement["pid"] != pids[0]
    assert 1.5 < replaced_after < 1.5 + 1.0 + 2.0, replaced_after  # timeout, grace, restart
