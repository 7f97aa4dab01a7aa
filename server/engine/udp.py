"""UDP echo: one task per UDP socket on a scheduler, with the limits that keep it from
being a reflector.

    sock = open_udp(host, port)                       # non-blocking, bound; ListenError if not
    udp = UdpEcho(sock, stats, rate=100, global_rate=10_000)
    scheduler.spawn(udp.run(), sock)                  # echo until Shutdown
    scheduler.spawn(every(1.0, udp.fold), daemon=True)

Each datagram read is answered by at most one datagram, to the address it came from,
with the same bytes (0 to 65,507 of them): never more bytes or datagrams out than in,
never to an address that did not send first. Before echoing, two token buckets must
each give a token (bursts of one second's worth):

  - the source address's (``rate`` per second). The table of sources is bounded
    (MAX_SOURCES): a source whose bucket has refilled is forgotten (it would start
    full anyway); if every entry is still in use, a new source is not echoed
    (``source_table_full``), so churning spoofed addresses cannot reset a victim's bucket;
  - everyone's (``global_rate`` per second).

Otherwise the datagram is dropped, counted by reason (``source_rate``, ``global_rate``,
``source_table_full``; ``send_failed`` when the kernel refused the echo) and a warning
is logged at most once a second. Counts stay in the task and are folded into Stats by
``fold`` (once a second) and at the end: no lock per datagram.

With ``--faults on``, a datagram the limits let through may then be dropped, delayed or
reordered by the fault policy (server/faults/udp.py); a held datagram goes out once, so
the rule above still holds.

Everything here runs on the scheduler thread that runs the task (``run`` and ``fold``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.engine.waits import READ, Shutdown, TaskGen, Wait, WaitTimeout
from server.lib.net import ListenError, format_address
from server.observe.stats import Stats
from server.observe.throttle import Throttle

if TYPE_CHECKING:
    from server.faults.udp import UdpFaults

log = logging.getLogger("echo.udp")

MAX_DATAGRAM = 65_535  # larger than any UDP payload (65,507 over IPv4), so none is cut
MAX_SOURCES = 10_000  # source addresses with a live token bucket
RECV_BATCH = 64  # datagrams read per wake-up before other tasks get a turn


def open_udp(host: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket; '::' is dual-stack where the OS allows it.
    ListenError says which port could not be had."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as error:
        raise ListenError(
            error.errno, f"cannot listen on {host}:{port}/udp: {error.strerror}", "the UDP port"
        ) from None
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(
            error.errno, f"cannot listen on {host}:{port}/udp: {error.strerror}", "the UDP port"
        ) from None
    return sock


class TokenBucket:
    """``rate`` tokens a second, at most ``rate`` held (at least 1); starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def full_at(self) -> float:
        """When the bucket will be full again if nothing is taken."""
        return self.last + (self.burst - self.tokens) / self.rate


class UdpEcho:
    """The UDP echo task and its counters; see the module docstring."""

    def __init__(
        self,
        sock: socket.socket,
        stats: Stats,
        *,
        rate: float,
        global_rate: float,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
        faults: UdpFaults | None = None,
    ) -> None:
        self._sock = sock
        self._stats = stats
        self._rate = rate
        self._clock = clock
        self._max_sources = max_sources
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently seen first
        self._global = TokenBucket(global_rate, clock())
        self._throttle = Throttle(clock=clock)
        self._faults = faults  # --faults on: drop, delay, reorder (server/faults/udp.py)
        self.address = sock.getsockname()
        # Not yet folded into Stats.
        self._received = self._sent = self._bytes_in = self._bytes_out = 0
        self._dropped: Counter[str] = Counter()

    def run(self) -> TaskGen:
        buffer = bytearray(MAX_DATAGRAM)
        view = memoryview(buffer)
        recvfrom_into = self._sock.recvfrom_into
        sendto = self._sock.sendto
        readable = Wait(READ)
        faults = self._faults
        try:
            while True:
                due = faults.next_due() if faults is not None else None
                try:
                    yield readable if due is None else Wait(READ, max(0.0, due - self._clock()))
                except WaitTimeout:
                    self._send_held(faults.due(self._clock()) if faults is not None else [])
                    continue
                except Shutdown:
                    if faults is not None:
                        self._send_held(faults.due(self._clock(), everything=True))
                    return
                now = self._clock()
                for _ in range(RECV_BATCH):
                    try:
                        size, address = recvfrom_into(buffer)
                    except BlockingIOError:
                        break
                    except OSError:  # an ICMP error reported late, and the like: not this datagram's
                        continue
                    self._received += 1
                    self._bytes_in += size
                    reason = self.admit(str(address[0]), now)
                    if reason is None and faults is not None:
                        verdict = faults.decide(str(address[0]), address, view[:size], now)
                        if verdict == faults.HELD:
                            continue  # it keeps its token; it goes out once, later
                        reason = None if verdict == faults.ECHO else verdict
                    if reason is None:
                        try:
                            sent = sendto(view[:size], address)
                        except OSError:  # the send buffer is full, no route, ...
                            reason = "send_failed"
                        else:
                            self._sent += 1
                            self._bytes_out += sent
                            if faults is not None and faults.held():
                                self._send_held(faults.due(now, echoed=True))
                            continue
                    self._drop(reason, address)
                if faults is not None and faults.held():
                    self._send_held(faults.due(self._clock()))
        finally:
            self.fold()

    def _send_held(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Send what a delay or reorder fault held (each admitted once, sent once)."""
        for data, address in datagrams:
            try:
                sent = self._sock.sendto(data, address)
            except OSError:
                self._drop("send_failed", address)
                continue
            self._sent += 1
            self._bytes_out += sent

    def fold(self) -> None:
        """Add the counts so far to Stats (once a second, and at the end)."""
        if self._received or self._dropped:
            self._stats.add_udp(self._received, self._sent, self._bytes_in, self._bytes_out, self._dropped)
            self._received = self._sent = self._bytes_in = self._bytes_out = 0
            self._dropped = Counter()

    def admit(self, ip: str, now: float) -> str | None:
        """None if this source and everyone may have one more echo; else why not."""
        sources = self._sources
        bucket = sources.get(ip)
        if bucket is None:
            if len(sources) >= self._max_sources:
                self._forget_refilled(now)
                if len(sources) >= self._max_sources:
                    return "source_table_full"
            bucket = sources[ip] = TokenBucket(self._rate, now)
        else:
            sources.move_to_end(ip)
        if not bucket.take(now):
            return "source_rate"
        if not self._global.take(now):
            return "global_rate"
        return None

    def _forget_refilled(self, now: float) -> None:
        sources = self._sources
        while sources:
            ip, bucket = next(iter(sources.items()))
            if bucket.full_at() > now:
                return  # the rest were seen later still
            del sources[ip]

    def _drop(self, reason: str, address: tuple[object, ...]) -> None:
        self._dropped[reason] += 1
        if reason.startswith("fault_"):
            return  # asked for: counted, and the ``fault`` event says so
        held_back = self._throttle.allow()
        if held_back is not None:
            log.warning(
                "UDP datagram from %s not echoed: %s (%d more dropped since last said)",
                format_address(address),
                reason,
                held_back,
            )
