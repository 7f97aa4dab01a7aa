"""Test helpers: event recording, socket round trips, and a server subprocess.

Nothing here sleeps to synchronize: every wait is on a condition, a socket or a
process pipe, with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class EventRecorder:
    """An Exchange subscriber that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def send(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [e.name for e in self.events]
                    raise AssertionError(f"no matching event within {timeout} s; saw {names}")
                self._cond.wait(left)

    def named(self, name: str) -> list[Any]:
        with self._cond:
            return [e for e in self.events if e.name == name]


def echo_round_trip(address: tuple[Any, ...], payload: bytes, *, chunk: int = 65536, timeout: float = 30.0) -> bytes:
    """Send ``payload`` (from a thread), half-close, and read until EOF."""
    with socket.create_connection(address[:2], timeout=timeout) as sock:

        def writer() -> None:
            view = memoryview(payload)
            for start in range(0, len(view), chunk):
                sock.sendall(view[start : start + chunk])
            sock.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=writer)
        thread.start()
        received = read_until_eof(sock)
        thread.join(timeout)
        return received


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return bytes(chunks)
        chunks += data


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


class JsonLines:
    """JSON log lines from a pipe, read on a thread; ``wait_for`` blocks on the next line."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line)
        self.lines.put(None)

    def _take(self, line: str) -> dict[str, Any] | None:
        if not line.startswith("{"):
            return None
        record: dict[str, Any] = json.loads(line)
        self.seen.append(record)
        return record

    def wait_for(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first line seen with event ``name`` and the given fields."""

        def matches(record: dict[str, Any]) -> bool:
            return record.get("event") == name and all(record.get(k) == v for k, v in match.items())

        for record in self.seen:
            if matches(record):
                return record
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name!r} line within {timeout} s; saw {[r.get('event') for r in self.seen]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the log ended before {name!r}; saw {[r.get('event') for r in self.seen]}")
            taken = self._take(line)
            if taken is not None and matches(taken):
                return taken

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Read to the end of the pipe; returns every record."""
        self._reader.join(timeout)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self._take(line)


def address_of(record: dict[str, Any], key: str = "address") -> tuple[str, int]:
    host, _, port = str(record[key]).rpartition(":")
    return host.strip("[]"), int(port)


class ServerProcess:
    """``python3 -m server`` in a subprocess, logging JSON to a pipe we read lines from."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.args = [sys.executable, "-m", "server", "--log-format", "json", *args]
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        assert self.proc.stdout is not None
        self.log = JsonLines(self.proc.stdout)
        self.address: tuple[str, int] = ("", 0)

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.log.seen

    def wait_for(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        return self.log.wait_for(name, timeout, **match)

    def start(self) -> ServerProcess:
        self.address = address_of(self.wait_for("ready"))
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for exit; then every remaining stdout line is in ``seen``."""
        code = self.proc.wait(timeout)
        self.log.finish(timeout)
        return code

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20.0, *, module: str = "server"
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the checkout, with no ECHO_ setting inherited."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but not listening for the whole
    with-block, so no other process can take it meanwhile (a port bound, closed and then
    used could be anyone's by then)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


class FakeClock:
    """A scheduler clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
