"""loadtest/reload.py: its classifier against real loopback peers, its kill windows, and
one short run against a real ``python3 -m server --workers 2`` (reloads and a kill -9
under load: no failed connection outside the kill's window, replaced within 1 s)."""

from __future__ import annotations

import io
import itertools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from loadtest import connect_loop, reload, server_log
from tests.helpers import ROOT, closed_port, read_exactly

PAYLOAD = b"\x00\x01\x02\x03"


@contextmanager
def one_peer(behaviour: Callable[[socket.socket], None] | None) -> Iterator[tuple[str, int]]:
    """A loopback listener whose first accepted connection gets ``behaviour`` (on a
    thread); None never accepts (the kernel still completes the handshake)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(5)

        def serve() -> None:
            assert behaviour is not None
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                behaviour(conn)

        thread = threading.Thread(target=serve, daemon=True) if behaviour else None
        if thread:
            thread.start()
        yield listener.getsockname()[:2]
        if thread:
            thread.join(5)
            assert not thread.is_alive()


def echo_once(conn: socket.socket) -> None:
    conn.sendall(read_exactly(conn, 4))
    while conn.recv(64):
        pass


def echo_reversed(conn: socket.socket) -> None:
    conn.sendall(read_exactly(conn, 4)[::-1])


def echo_and_more(conn: socket.socket) -> None:
    conn.sendall(read_exactly(conn, 4) + b"!")


def reset_at_once(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_the_classifier_tells_each_outcome_apart() -> None:
    with closed_port() as port:  # bound, not listening
        assert connect_loop.attempt(("127.0.0.1", port), PAYLOAD, timeout=2)[0] == connect_loop.REFUSED
    with one_peer(echo_once) as address:
        assert connect_loop.attempt(address, PAYLOAD, timeout=2) == (connect_loop.OK, "")
    with one_peer(None) as address:
        assert connect_loop.attempt(address, PAYLOAD, timeout=0.3)[0] == connect_loop.UNANSWERED
    with one_peer(echo_reversed) as address:
        kind, detail = connect_loop.attempt(address, PAYLOAD, timeout=2)
        assert kind == connect_loop.WRONG and "differ" in detail
    with one_peer(echo_and_more) as address:
        assert connect_loop.attempt(address, PAYLOAD, timeout=2) == (connect_loop.WRONG, "1 bytes after the echo")
    with one_peer(reset_at_once) as address:
        assert connect_loop.attempt(address, PAYLOAD, timeout=2)[0] == connect_loop.RESET


def test_only_failures_just_after_a_kill_are_excused() -> None:
    settings = reload.Settings(reloads=0, kills=1)
    result = reload.Run(settings, reload_s=[])
    load = connect_loop.ConnectLoop(("127.0.0.1", 9), rate=1.0, seconds=1.0)
    log = server_log.ServerLog(io.BytesIO(b""))
    log.finish(5)
    result.kills.append(reload.Kill(at=100.0, worker=0, pid=1, ready_s=0.3, restart_s=0.29))
    load.counts.update({connect_loop.OK: 10, connect_loop.RESET: 2})
    load.failures += [
        connect_loop.Failure(99.9, 100.2, connect_loop.RESET, "ConnectionResetError: ECONNRESET"),
        connect_loop.Failure(100.7, 100.8, connect_loop.RESET, "ConnectionResetError: ECONNRESET"),
    ]
    reload._judge(result, load, log)
    assert result.kills[0].window == {connect_loop.RESET: 1}
    assert result.problems == ["1 failed connections outside the kill windows: {'reset': 1}"]


def test_kills_are_spaced_out_of_a_crash_loop() -> None:
    times = reload.Settings(seconds=60, kills=5).kill_times()
    assert min(b - a for a, b in itertools.pairwise(times)) >= reload.KILL_SPACING_S > 2.5
    assert "--seconds" in (reload.Settings(seconds=15, kills=5).problem() or "")
    assert reload.Settings().problem() is None


@pytest.mark.slow
def test_reloads_and_a_kill_under_load_refuse_nothing() -> None:
    args = ["--workers", "2", "--rate", "300", "--seconds", "6", "--reloads", "2", "--kills", "1", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.reload", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.startswith("{"), done.stderr
    doc = json.loads(done.stdout)
    assert done.returncode == 0, doc["problems"]
    assert doc["passed"] and doc["reloads"] == 2
    assert doc["outside_kill_windows"] == dict.fromkeys(connect_loop.FAILURES, 0), doc["failures_outside"]
    assert doc["ok"] >= 900, doc  # of at most 1,800: half the rate asked for
    [kill] = doc["kills"]
    assert kill["status"] == "killed by SIGKILL"
    assert kill["replacement_pid"] not in (None, kill["pid"])
    assert 0 < kill["ready_s"] < 1.0 and 0 < kill["restart_s"] <= kill["ready_s"]
    assert doc["server_exit"] == 0 and doc["server_workers_restarted"] == 1
