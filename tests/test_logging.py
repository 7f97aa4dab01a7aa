"""Logging end to end: every event written, nothing of the payload, never slowing echo."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from server.observe.logger import LogActor
from tests.conftest import ServerFactory
from tests.helpers import ROOT, ServerProcess, address_of, read_exactly
from tests.test_cli import reaped
from tests.test_events import StuckStream

CANARY = b"CANARY-4e1f7c-payload-must-never-be-logged"


@pytest.fixture
def json_server() -> Iterator[ServerProcess]:
    process = ServerProcess("--port", "0", "--admin-port", "off", "--stats-interval", "0")
    try:
        yield process.start()
    finally:
        process.stop()


def test_2000_connections_then_sigterm_log_every_open_and_close(json_server: ServerProcess) -> None:
    connections = 2000
    for _ in range(connections):
        with socket.create_connection(json_server.address, timeout=10) as sock:
            sock.sendall(CANARY)
            assert read_exactly(sock, len(CANARY)) == CANARY
    json_server.signal(signal.SIGTERM)
    assert json_server.finish() == 0
    assert json_server.proc.stdout is not None
    records = json_server.seen
    assert sum(r["event"] == "opened" for r in records) == connections
    assert sum(r["event"] == "closed" for r in records) == connections
    stopped = [r for r in records if r["event"] == "stopped"]
    assert len(stopped) == 1
    assert stopped[0]["accepted"] == stopped[0]["closed"] == connections
    assert stopped[0]["bytes_received"] == connections * len(CANARY)
    lifecycle = [r["event"] for r in records if r["event"] in ("started", "listening", "ready", "stopping", "stopped")]
    assert lifecycle == ["started", "listening", "ready", "stopping", "stopped"]
    assert records[-1]["event"] == "stopped"
    for record in records:
        assert CANARY.decode() not in json.dumps(record)


CHURN = 1000
SLOWEST_ROUND_TRIP_S = 1.0  # a server that waited for the log would wait StuckStream's 30 s


def test_a_log_sink_blocked_for_good_never_delays_an_echo(make_server: ServerFactory) -> None:
    """The invariant, not a throughput ratio: while every write of the log blocks (until
    the test ends), each open-echo-close round trip still completes promptly and the
    events the log cannot take are dropped and counted."""
    server, _ = make_server(max_connections_per_ip=100_000)
    address = server.server_address[:2]
    stuck_stream = StuckStream()
    stuck = LogActor(server.stats, log_format="json", mailbox_size=100, stream=stuck_stream)
    stuck.start()
    payload = b"p" * 64
    slowest = 0.0
    started = time.monotonic()
    try:
        with server.exchange.subscribed(stuck):
            for _ in range(CHURN):  # two events each: opened, closed
                began = time.monotonic()
                with socket.create_connection(address, timeout=10) as sock:
                    sock.sendall(payload)
                    assert read_exactly(sock, len(payload)) == payload
                slowest = max(slowest, time.monotonic() - began)
            took = time.monotonic() - started
            dropped = server.stats.snapshot().log_events_dropped
            with socket.create_connection(address, timeout=10) as sock:  # and it keeps echoing
                sock.sendall(CANARY)
                assert read_exactly(sock, len(CANARY)) == CANARY
    finally:
        stuck_stream.release.set()
        stuck.close()
        stuck.join(10)
    assert slowest < SLOWEST_ROUND_TRIP_S, f"a round trip took {slowest:.3f} s while the log was blocked"
    assert took < 30.0, f"{CHURN} round trips took {took:.1f} s"
    assert dropped >= 2 * CHURN - 100 - 2  # all but a full mailbox and the one being written


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Read a pipe until ``marker`` appears, with a deadline (no blocking readline)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout} s; got {data!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {data!r}")
        data += chunk
    return data


def _server(*args: str) -> subprocess.Popen[bytes]:
    """``python -m server --port 0 *args`` with unbuffered stdout and stderr pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def test_a_closed_stdout_costs_log_lines_not_the_server() -> None:
    """`python3 -m server | head -1`: the pipe closes; echo goes on, one line on stderr."""
    with reaped(_server("--admin-port", "off", "--log-format", "json")) as process:
        assert process.stdout is not None and process.stderr is not None
        text = _read_until(process.stdout.fileno(), b'"event":"ready"', timeout=15)
        ready = next(json.loads(line) for line in text.splitlines() if b'"ready"' in line)
        address = address_of(ready)
        process.stdout.close()
        for _ in range(20):
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"still echoing")
                assert read_exactly(sock, 13) == b"still echoing"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        errors = process.stderr.read().decode().splitlines()
    # One line when it happens, one with the total at exit (the 20 connections' lines).
    assert len(errors) == 2, errors
    assert errors[0].startswith("echo-server: cannot write the log (Broken pipe)")
    assert errors[1].startswith("echo-server: cannot write the log (Broken pipe): ")
    assert errors[1].endswith(" log lines lost in all") and int(errors[1].split()[-6]) >= 40
    assert not any("Traceback" in line or "Exception ignored" in line for line in errors)


def test_text_log_shows_each_lifecycle_step_once() -> None:
    """A logging line used to restate started/listening/stopping/stopped beside the event."""
    with reaped(_server("--admin-port", "0", "--log-format", "text")) as process:
        assert process.stdout is not None
        head = _read_until(process.stdout.fileno(), b" ready ", timeout=15)
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=15)
    assert process.returncode == 0, errors
    lines = (head + rest).decode().splitlines()
    for step in ("started", "listening", "ready", "stopping", "stopped"):
        saying = [line for line in lines if step in line]
        assert len(saying) == 1, f"{step}: {saying}"
    assert sum("received SIGTERM" in line for line in lines) == 1
    # Nested statistics are dotted key=value pairs, never a Python repr.
    stopped = next(line for line in lines if " stopped " in line)
    assert not any(mark in stopped for mark in "{}'"), stopped
    fields = dict(part.split("=", 1) for part in stopped.split()[3:])
    assert fields["listeners.tcp.accepted"] == "0" and fields["closed_by_reason"] == "-", stopped


def test_a_burst_cut_by_sigterm_logs_each_connection_once_opened_then_closed() -> None:
    """Client threads open connections as fast as they can; SIGTERM lands mid-burst. Every
    connection the server accepted has exactly one ``opened`` line and, after it, one
    ``closed`` line, and the counts match the final statistics: no line lost or doubled
    by the log's gathered bursts, nor at the stop."""
    process = ServerProcess("--port", "0", "--admin-port", "off", "--stats-interval", "0").start()
    completed = 0
    enough = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        nonlocal completed
        while True:
            try:
                with socket.create_connection(process.address, timeout=10) as sock:
                    sock.sendall(CANARY)
                    read_exactly(sock, len(CANARY))
            except (OSError, AssertionError):  # the listener closed at the stop, or the drain cut us
                return
            with lock:
                completed += 1
                if completed >= 1500:
                    enough.set()

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        for thread in clients:
            thread.start()
        assert enough.wait(60), f"only {completed} connections completed"
        process.signal(signal.SIGTERM)  # the clients are still connecting
        assert process.finish() == 0
        for thread in clients:
            thread.join(30)
    finally:
        process.stop()
    records = process.seen
    assert not [r for r in records if r["event"] == "log_dropped"]
    where: dict[int, list[str]] = {}
    for record in records:
        if record["event"] in ("opened", "closed"):
            where.setdefault(record["conn"], []).append(record["event"])
    assert all(events == ["opened", "closed"] for events in where.values()), [
        (conn, events) for conn, events in where.items() if events != ["opened", "closed"]
    ][:5]
    stopped = next(r for r in records if r["event"] == "stopped")
    assert len(where) == stopped["accepted"] == stopped["closed"] >= completed >= 1500
    assert sorted(where) == list(range(1, len(where) + 1)), "connection ids are 1..N, none missing"
