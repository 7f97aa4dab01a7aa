"""Helpers for the tests of ``echo-client rate`` and ``watch``: run the client as a real
subprocess, start a real server, stop it (SIGSTOP) for a while in the middle of a run,
and an echo server that notes when each message arrived (ArrivalClock).

Waits are on process pipes and exits with bounded timeouts. A stall's length is the
scenario under test (the server is frozen for exactly that long), not synchronization.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import ROOT, ServerProcess


def client_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def run_client(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(client_args(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def start_client(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(client_args(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON document a client printed: all of stdout (bench), or its last JSON line."""
    try:
        whole: dict[str, Any] = json.loads(stdout)
        return whole
    except json.JSONDecodeError:
        pass
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in {stdout!r}"
    document: dict[str, Any] = json.loads(lines[-1])
    return document


@contextmanager
def echo_server(*args: str) -> Iterator[ServerProcess]:
    server = ServerProcess("--port", "0", "--admin-port", "off", "--stats-interval", "0", *args)
    try:
        server.start()
        yield server
    finally:
        if server.proc.poll() is None:
            server.signal(signal.SIGCONT)  # a test that failed mid-stall must not leave it frozen
        server.stop()


def keep_running(client: subprocess.Popen[str], seconds: float) -> None:
    """Let ``seconds`` of the client's run pass; fail if it exits meanwhile."""
    try:
        client.wait(seconds)
    except subprocess.TimeoutExpired:
        return
    raise AssertionError(
        f"the client exited early ({client.returncode}): {client.stderr.read() if client.stderr else ''}"
    )


def freeze(pid: int, seconds: float) -> float:
    """SIGSTOP ``pid`` for ``seconds``, then SIGCONT; returns how long it really was frozen."""
    stopped = time.monotonic()
    try:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)  # the stall itself: its length is what the test measures
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.monotonic() - stopped


def wait_for_opened(server: ServerProcess, count: int, timeout: float = 15) -> None:
    """Until the server has logged ``count`` opened connections (read from its log pipe)."""
    deadline = time.monotonic() + timeout
    while sum(record.get("event") == "opened" for record in server.seen) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"fewer than {count} connections opened within {timeout} s"
        try:
            line = server.log.lines.get(timeout=left)
        except queue.Empty:
            continue
        assert line is not None, "the server's log ended"
        server.log._take(line)


def read_so_far(server: ServerProcess) -> list[dict[str, Any]]:
    """Every record the server has logged up to now (the lines already on its pipe)."""
    while True:
        try:
            line = server.log.lines.get_nowait()
        except queue.Empty:
            return server.seen
        if line is not None:
            server.log._take(line)


SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); not exported by the socket module


class ArrivalClock:
    """An echo server (one thread, one selector) that notes when each message's first
    byte arrives: the spacing the network saw, not what the client believes it did."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrivals: list[float] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.stop = threading.Event()
        self.wake_r, self.wake_w = socket.socketpair()
        self.thread = threading.Thread(target=self._serve, name="arrival-clock")

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self.wake_r, selectors.EVENT_READ)
        received: dict[socket.socket, int] = {}
        while not self.stop.is_set():
            for key, _ in selector.select():
                now = time.time()
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # the kernel's arrival time
                    received[conn] = 0
                    selector.register(conn, selectors.EVENT_READ)
                elif key.fileobj is not self.wake_r:
                    conn = key.fileobj  # type: ignore[assignment]
                    data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16))
                    if not data:
                        selector.unregister(conn)
                        conn.close()
                        del received[conn]
                        continue
                    stamp = now
                    for level, kind, value in ancillary:
                        if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS) and len(value) == 16:
                            seconds, nanoseconds = struct.unpack("qq", value)
                            stamp = seconds + nanoseconds / 1e9
                    before = received[conn]
                    received[conn] += len(data)
                    starts = -(-received[conn] // self.size) - -(-before // self.size)  # message starts in this read
                    self.arrivals.extend([stamp] * starts)
                    conn.sendall(data)
        for conn in received:
            conn.close()
        selector.close()

    def __enter__(self) -> ArrivalClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.wake_w.send(b"x")
        self.thread.join(10)
        for sock in (self.listener, self.wake_r, self.wake_w):
            sock.close()
