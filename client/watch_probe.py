"""One long-lived connection of ``echo-client watch``, probed on its own thread.

A Prober sends a small random payload every ``interval`` and checks the echo byte for
byte. A *gap* opens at the first probe that fails (its send time for a ``timeout``: no
echo within ``max_latency``; the moment of the failure for ``reset``, ``eof``,
``refused`` and ``mismatch``) and closes at the first good echo after it. A connection
that only stalled keeps waiting for its overdue echo (it is the same stream), so a
frozen server gives one gap per connection, as long as the freeze. A broken connection is
re-opened with ``reconnect`` (at once, then every interval until it works; the gap
ends at the new connection's first good echo), and so is one whose echo is overdue by
more than the connect timeout (a peer gone without a reset); without ``reconnect`` a
broken connection is lost: its gap is reported at once with no end.

The replica is the first line the server sends when ``banner`` is set (a server started
with ``--banner '{hostname}\\n'``); else None.

Thread rules: each Prober owns its socket and state and runs only on its own thread.
It hands finished gaps and probe counts to the main thread through the ``report`` queue
and reads only ``stop`` (an Event). Every wait is bounded by the interval or the
latency limit, so a stop is seen within one of them.
"""

from __future__ import annotations

import math
import queue
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from client.library import error_kind

MAX_BANNER_BYTES = 1024
STOP_CHECK_S = 0.5  # the longest a wait goes without looking at the stop Event
ProbeCounts = tuple[int, int, int]  # (connection, good probes, failed probes) since the last report


@dataclass(frozen=True)
class WatchSpec:
    host: str
    port: int
    interval_s: float = 0.05
    max_latency_s: float = 0.25
    size: int = 16
    reconnect: bool = False
    banner: bool = False
    connect_timeout_s: float = 5.0


@dataclass
class Gap:
    conn: int
    start: float  # time.monotonic()
    cause: str  # timeout, reset, eof, refused, mismatch
    replica_before: str | None
    end: float | None = None
    replica_after: str | None = None
    failed_probes: int = field(default=0)

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start


class Broken(Exception):
    """The connection cannot carry probes any more; ``cause`` says why."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _cause(error: OSError) -> str:
    kind = error_kind(error)
    return kind if kind in ("refused", "timeout") else "reset"  # any other failure ends the connection too


class Prober:
    def __init__(
        self, index: int, spec: WatchSpec, report: queue.Queue[Gap | ProbeCounts], stop: threading.Event
    ) -> None:
        self.index = index
        self.spec = spec
        self.report = report
        self.stop = stop
        self.sock: socket.socket | None = None
        self.replica: str | None = None
        self.gap: Gap | None = None
        self.good = self.failed = 0
        self.rng = random.Random(index)
        self.thread = threading.Thread(target=self.run, name=f"watch-{index}", daemon=True)

    # --- the probing loop (own thread) ------------------------------------------------------

    def run(self) -> None:
        next_probe = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    if self.sock is None:
                        self._connect()
                    self._probe()
                except Broken as broken:
                    self._close()
                    first_failure = self.gap is None
                    self._open_gap(time.monotonic(), broken.cause)
                    self.failed += 1
                    if not self.spec.reconnect:
                        return  # lost: its gap is reported (with no end) below
                    if first_failure:
                        continue  # reconnect at once: the outage is what the user has to wait
                self._flush()
                next_probe += self.spec.interval_s
                now = time.monotonic()
                if next_probe < now:
                    next_probe = now  # a long wait (an overdue echo) does not cause a burst after it
                self.stop.wait(next_probe - now)
        finally:
            self._flush()
            self._close()
            if self.gap is not None:
                self.report.put(self.gap)  # still open when the watch ended: reported with no end

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.spec.host, self.spec.port), timeout=self.spec.connect_timeout_s)
        except OSError as error:
            raise Broken(_cause(error)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        if self.spec.banner:
            self._read_banner(sock)

    def _read_banner(self, sock: socket.socket) -> None:
        line = bytearray()
        deadline = time.monotonic() + self.spec.connect_timeout_s
        while not line.endswith(b"\n"):
            if len(line) >= MAX_BANNER_BYTES or not self._wait_readable(deadline):
                raise Broken("timeout" if len(line) < MAX_BANNER_BYTES else "mismatch")
            chunk = self._recv(MAX_BANNER_BYTES - len(line))
            line += chunk
        self.replica = line.decode(errors="replace").strip()

    def _probe(self) -> None:
        """One probe: send, then wait for the whole echo. Past ``max_latency`` a timeout
        gap opens, and the wait goes on (counting a failed probe per interval) until the
        echo comes or the connection breaks."""
        assert self.sock is not None
        payload = self.rng.randbytes(self.spec.size)
        sent_at = time.monotonic()
        try:
            self.sock.sendall(payload)
        except OSError as error:
            raise Broken(_cause(error)) from None
        received = bytearray()
        deadline = sent_at + self.spec.max_latency_s
        while len(received) < len(payload):
            if not self._wait_readable(deadline):
                if self.stop.is_set():
                    return
                if self.gap is None:
                    self._open_gap(sent_at, "timeout")
                if self.spec.reconnect and time.monotonic() - sent_at > self.spec.connect_timeout_s:
                    raise Broken("timeout")  # a peer gone without a reset: try a new connection
                self.failed += 1
                self._flush()
                deadline = time.monotonic() + self.spec.interval_s
                continue
            received += self._recv(len(payload) - len(received))
        if received != payload:
            raise Broken("mismatch")
        now = time.monotonic()
        if self.gap is not None:
            self._flush()  # the failed probes count into the gap before it is reported
            self.gap.end, self.gap.replica_after = now, self.replica
            self.report.put(self.gap)
            self.gap = None
            self.good += 1
        elif now - sent_at <= self.spec.max_latency_s:
            self.good += 1
        else:
            self.failed += 1

    # --- helpers ------------------------------------------------------------------------------

    def _wait_readable(self, deadline: float) -> bool:
        """Readable before ``deadline`` (and not stopped meanwhile)? poll(2), not select(2):
        with thousands of connections the descriptors pass FD_SETSIZE."""
        assert self.sock is not None
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
            if poller.poll(math.ceil(min(left, STOP_CHECK_S) * 1000)):
                return True
        return False

    def _recv(self, size: int) -> bytes:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(size)
        except OSError as error:
            raise Broken(_cause(error)) from None
        if not chunk:
            raise Broken("eof")
        return chunk

    def _open_gap(self, start: float, cause: str) -> None:
        if self.gap is None:
            self.gap = Gap(self.index, start, cause, self.replica)

    def _flush(self) -> None:
        if self.good or self.failed:
            if self.gap is not None:
                self.gap.failed_probes += self.failed
            self.report.put((self.index, self.good, self.failed))
            self.good = self.failed = 0

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
