"""A ``python3 -m server --workers N`` subprocess and its JSON log, read on a thread.

``start_server`` starts it (ephemeral ports on 127.0.0.1, ECHO_* variables dropped, a
process group of its own). ``ServerLog`` reads its stdout on a thread that stamps each
line with the monotonic clock as it arrives and parses only the lifecycle lines (the
per-connection ones are only counted); the main thread takes them from a queue, always
with a timeout. ``_Tail`` keeps the last lines of its stderr.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

# Lines parsed (the rest are counted by name only).
WATCHED = frozenset(
    {
        "started",
        "listening",
        "ready",
        "worker_ready",
        "worker_exited",
        "reloading",
        "reloaded",
        "reload_failed",
        "failed",
        "stopping",
        "stopped",
        "log_dropped",
        "log",
    }
)


# --- the server and its log -----------------------------------------------------------


def address_of(record: dict[str, Any], key: str = "address") -> tuple[str, int]:
    host, _, port = str(record[key]).rpartition(":")
    return host.strip("[]"), int(port)


def _event_name(line: bytes) -> str | None:
    """The ``event`` of a JSON log line, without parsing it (it is the third field)."""
    if not line.startswith(b"{"):
        return None
    start = line.find(b'"event":"')
    if start < 0:
        return None
    start += len(b'"event":"')
    end = line.find(b'"', start)
    return line[start:end].decode("ascii", "replace") if end > 0 else None


Record = dict[str, Any]


class ServerLog:
    """The server's stdout: read on a thread, taken on the main thread with timeouts.

    ``seen`` holds (arrival, record) for every parsed line taken so far; ``live`` maps
    each running worker's pid to (slot, generation); ``generation`` is the one serving."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._queue: queue.Queue[tuple[float, Record] | None] = queue.Queue()
        self._counts: Counter[str] = Counter()  # every line by event name (the reader's)
        self._counts_lock = threading.Lock()
        self.seen: list[tuple[float, Record]] = []
        self.live: dict[int, tuple[int, int]] = {}
        self.generation = 1
        self.ended = False
        self._reader = threading.Thread(target=self._read, args=(pipe,), name="server-log", daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[bytes]) -> None:
        try:
            for line in pipe:
                arrived = time.monotonic()
                name = _event_name(line)
                if name is None:
                    continue
                with self._counts_lock:
                    self._counts[name] += 1
                if name in WATCHED:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    self._queue.put((arrived, record))
        except (OSError, ValueError):
            pass  # the pipe closed under us: the end of the log
        finally:
            self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        """Take one line (waiting up to ``timeout``); False if none came or the log ended."""
        if self.ended:
            return False
        try:
            item = self._queue.get(timeout=max(0.0, timeout)) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        if item is None:
            self.ended = True
            return False
        self.seen.append(item)
        record = item[1]
        name = record.get("event")
        if name == "worker_ready":
            self.live[int(record["pid"])] = (int(record["worker"]), int(record["generation"]))
        elif name == "worker_exited":
            self.live.pop(int(record["pid"]), None)
        elif name == "reloaded":
            self.generation = int(record["generation"])
        return True

    def drain(self) -> None:
        """Take every line already here."""
        while self._take(0):
            pass

    def until(self, deadline: float) -> None:
        """Take lines as they come until ``deadline`` (or the log's end)."""
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._take(left)

    def wait_for(
        self, predicate: Callable[[Record], bool], timeout: float, since: float = 0.0
    ) -> tuple[float, Record] | None:
        """The first line that arrived at or after ``since`` matching ``predicate``,
        waiting up to ``timeout`` for it; None if none came (or the log ended)."""
        for arrived, record in self.seen:
            if arrived >= since and predicate(record):
                return arrived, record
        deadline = time.monotonic() + timeout
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._take(left):
                arrived, record = self.seen[-1]
                if arrived >= since and predicate(record):
                    return arrived, record
        return None

    def counts(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

    def named(self, name: str) -> list[Record]:
        return [record for _, record in self.seen if record.get("event") == name]

    def finish(self, timeout: float) -> None:
        """After the exit: wait for the reader to reach the pipe's end, take the rest."""
        self._reader.join(timeout)
        self.drain()


class _Tail:
    """The last lines of a pipe (the server's stderr), read on a thread."""

    def __init__(self, pipe: IO[bytes], keep: int = 40) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._thread = threading.Thread(target=self._read, args=(pipe,), name="server-stderr", daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        try:
            for line in pipe:
                self.lines.append(line.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass

    def finished(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def text(self, timeout: float = 1.0) -> str:
        self.finished(timeout)
        return "\n".join(self.lines)


def start_server(workers: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env["PYTHONUNBUFFERED"] = "1"
    args = [sys.executable, "-m", "server", "--port", "0", "--admin-port", "0", "--workers", str(workers)]
    args += ["--log-format", "json", "--max-connections-per-ip", "100000"]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
