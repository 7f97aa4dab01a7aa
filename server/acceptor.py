"""The acceptor: owns the listening socket, admits connections, hands them out.

It is a generator task on its own Scheduler (so the pool hosts it like the others):
wait until the listener is readable, accept a batch, and for each connection either

  - reject it: over max_connections or max_connections_per_ip, it is closed at once
    without a byte, counted in Stats, and a ``rejected`` event is published at most
    once a second per reason (with how many it stands for); or
  - admit it: non-blocking, TCP_NODELAY, publish ``opened``, and hand it to the next
    connection scheduler round-robin through that scheduler's queue + wake-up.

accept() failing for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses
accepting for ACCEPT_PAUSE_S: no spinning, a warning at most once a second, and
``accept_paused``/``accept_resumed`` events around the episode.

Everything here runs on the acceptor's scheduler thread.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from server.events import Event, event
from server.listener import format_address
from server.scheduler import READ, Scheduler, Sleep, TaskGen, Wait
from server.stats import Stats
from server.throttle import Throttle

log = logging.getLogger("echo.acceptor")

ACCEPT_BATCH = 64  # connections accepted per wake-up before giving other tasks a turn
ACCEPT_PAUSE_S = 0.1
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Hand-off target: called on the chosen scheduler's thread with the new connection.
StartConnection = Callable[[Scheduler, socket.socket, int, str, str], None]


def peer_text(address: tuple[object, ...]) -> tuple[str, str]:
    """(ip, "ip:port") for a peer address; IPv4-mapped IPv6 shown as IPv4."""
    ip = str(address[0])
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip, format_address((ip, address[1]))


class Acceptor:
    def __init__(
        self,
        listener: socket.socket,
        schedulers: Sequence[Scheduler],
        start_connection: StartConnection,
        *,
        stats: Stats,
        publish: Callable[[Event], None],
        max_connections: int,
        max_connections_per_ip: int,
        on_ready: Callable[[], None],
    ) -> None:
        self._listener = listener
        self._schedulers = schedulers
        self._start_connection = start_connection
        self._stats = stats
        self._publish = publish
        self._max_connections = max_connections
        self._max_per_ip = max_connections_per_ip
        self._on_ready = on_ready
        self._next_scheduler = itertools.cycle(schedulers)
        self._ids = itertools.count(1)
        self._reject_throttles: dict[str, Throttle] = {}
        self._pause_throttle = Throttle()
        self._paused_errno = 0

    def run(self) -> TaskGen:
        accept = self._listener.accept
        readable = Wait(READ)
        self._on_ready()
        try:
            while True:
                yield readable
                yield from self._accept_batch(accept)
        finally:
            # So that the counts of the rejected events add up to every rejection.
            for reason, throttle in self._reject_throttles.items():
                if throttle.held_back:
                    self._publish(event("rejected", level="warning", reason=reason, count=throttle.held_back))

    def _accept_batch(self, accept: Callable[[], tuple[socket.socket, Any]]) -> TaskGen:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:
                    self._note_pause(error)
                    yield Sleep(ACCEPT_PAUSE_S)
                    return
                # ECONNABORTED and friends: that one connection is gone, go on.
                self._stats.accept_failed()
                continue
            if self._paused_errno:
                self._note_resume()
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple[object, ...]) -> None:
        ip, peer = peer_text(address)
        reason = self._stats.admit(ip, self._max_connections, self._max_per_ip)
        if reason is not None:
            sock.close()
            self._note_rejection(reason, peer)
            return
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer may already be gone; its task will find out
        conn_id = next(self._ids)
        self._publish(event("opened", conn_id=conn_id, peer=peer))
        scheduler = next(self._next_scheduler)
        scheduler.call_soon_threadsafe(self._start_connection, scheduler, sock, conn_id, peer, ip)

    def _note_rejection(self, reason: str, peer: str) -> None:
        throttle = self._reject_throttles.get(reason)
        if throttle is None:
            throttle = self._reject_throttles[reason] = Throttle()
        held_back = throttle.allow()
        if held_back is None:
            return
        self._publish(event("rejected", level="warning", peer=peer, reason=reason, count=held_back + 1))

    def _note_pause(self, error: OSError) -> None:
        self._stats.accept_failed()
        if not self._paused_errno:
            self._paused_errno = error.errno or -1
            self._publish(
                event(
                    "accept_paused",
                    level="warning",
                    errno=errno.errorcode.get(self._paused_errno, str(self._paused_errno)),
                )
            )
        held_back = self._pause_throttle.allow()
        if held_back is not None:
            log.warning(
                "accept() failed: %s; pausing accepts for %.0f ms (%d more since last said)",
                error.strerror,
                ACCEPT_PAUSE_S * 1000,
                held_back,
            )

    def _note_resume(self) -> None:
        name = errno.errorcode.get(self._paused_errno, str(self._paused_errno))
        self._paused_errno = 0
        self._publish(event("accept_resumed", errno=name))
