"""A paced connect loop against an echo server, each attempt classified.

    ConnectLoop(address, rate, seconds).start(); ...; .stop()

Each attempt connects, sends a few bytes, reads exactly them back, half-closes, reads
to EOF and closes, within one deadline, and is one of: ok; refused; reset; unanswered
(the deadline); wrong (other bytes, an EOF before all of them, or bytes after them);
other (any other OSError, e.g. out of ephemeral ports). The payload appears in no
detail or report: only lengths. The loop's threads are its own; ``counts`` and
``failures`` are read under its lock by whoever started it (loadtest/reload.py).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

THREADS = 4  # connect-loop threads
ATTEMPT_TIMEOUT_S = 3.0  # one attempt, connect to close
OK, REFUSED, RESET, UNANSWERED, WRONG, OTHER = "ok", "refused", "reset", "unanswered", "wrong", "other"
FAILURES = (REFUSED, RESET, UNANSWERED, WRONG, OTHER)
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN}
_MOST_AFTER_ECHO = 65536  # bytes read after the echo before calling it wrong and giving up


# --- one attempt --------------------------------------------------------------------


def attempt(address: tuple[str, int], payload: bytes, timeout: float = ATTEMPT_TIMEOUT_S) -> tuple[str, str]:
    """Connect, send ``payload``, read it back exactly, half-close, read to EOF, close,
    all within ``timeout``: (kind, detail), kind one of OK and FAILURES. The detail names
    the error or the lengths, never the bytes."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the attempt's deadline passed")
        return remaining

    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.settimeout(left())
            sock.sendall(payload)
            echoed = bytearray()
            while len(echoed) < len(payload):
                sock.settimeout(left())
                chunk = sock.recv(len(payload) - len(echoed))
                if not chunk:
                    return WRONG, f"EOF after {len(echoed)} of {len(payload)} bytes"
                echoed += chunk
            if echoed != payload:
                return WRONG, f"the {len(payload)} bytes echoed differ from those sent"
            sock.shutdown(socket.SHUT_WR)
            extra = 0
            while True:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    break
                extra += len(chunk)
                if extra > _MOST_AFTER_ECHO:
                    break
            if extra:
                return WRONG, f"{extra} bytes after the echo"
    except ConnectionRefusedError as error:
        return REFUSED, _describe(error)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as error:
        return RESET, _describe(error)
    except TimeoutError as error:
        return UNANSWERED, _describe(error)
    except OSError as error:
        return (RESET if error.errno in _RESET_ERRNOS else OTHER), _describe(error)
    return OK, ""


def _describe(error: OSError) -> str:
    name = type(error).__name__
    if error.errno is not None:
        return f"{name}: {errno.errorcode.get(error.errno, error.errno)}"
    return f"{name}: {error}" if str(error) else name


# --- the connect loop ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    started: float  # monotonic
    ended: float
    kind: str
    detail: str


class ConnectLoop:
    """THREADS threads of attempts, paced to ``rate`` a second in all, from ``start``
    until ``start + seconds``. Counts by kind; keeps every failure with its times."""

    def __init__(self, address: tuple[str, int], rate: float, seconds: float, threads: int = THREADS) -> None:
        self._address = address
        self._rate = rate
        self._seconds = seconds
        self._threads = [
            threading.Thread(target=self._run, args=(index, threads), name=f"connect-{index}", daemon=True)
            for index in range(threads)
        ]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[Failure] = []
        self.started = 0.0
        self.ended = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    @property
    def ends_at(self) -> float:
        return self.started + self._seconds

    def join(self, timeout: float) -> bool:
        """Wait for every thread (an attempt under way finishes within its timeout)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.ended = time.monotonic()
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._stop.set()

    def _run(self, index: int, threads: int) -> None:
        interval = threads / self._rate
        next_at = self.started + index / self._rate
        sequence = index
        counts: Counter[str] = Counter()
        failures: list[Failure] = []
        try:
            while next_at < self.ends_at:
                pause = next_at - time.monotonic()
                if pause > 0 and self._stop.wait(pause):  # pacing the load
                    break
                if self._stop.is_set():
                    break
                started = time.monotonic()
                payload = (sequence & 0xFFFFFFFF).to_bytes(4, "big")
                sequence += threads
                kind, detail = attempt(self._address, payload)
                counts[kind] += 1
                if kind != OK:
                    failures.append(Failure(started, time.monotonic(), kind, detail))
                next_at = max(next_at + interval, started)  # behind: at once, but no burst
        finally:
            with self._lock:
                self.counts.update(counts)
                self.failures.extend(failures)
