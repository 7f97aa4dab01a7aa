"""The acceptor: owns the listening socket, admits connections, hands them out.

It is a generator task on its own Scheduler (so the pool hosts it like the others):
wait until the listener is readable, accept a batch, and for each connection either

  - reject it: over max_connections or max_connections_per_ip, it is closed at once
    without a byte, counted in Stats, and a ``rejected`` event is published at most
    once a second per reason (with how many it stands for); or
  - admit it: non-blocking, TCP_NODELAY (inherited from the listener where the kernel
    does so: no system call), publish ``opened``, and hand it to the next connection
    scheduler round-robin through that scheduler's queue + wake-up.

With PROXY protocol on (``proxy=ProxyPolicy(...)``), admission is split (see stats.py
for the rule): at accept, a source outside --proxy-protocol-from is rejected at once
(reason ``proxy_protocol``, detail ``untrusted``) and the others only reserve a place
under max_connections; the connection's task reads the header (proxy_step.py), then
calls ``ProxyAdmission.admit`` (the per-address check by the header's address, then
``opened`` with ``peer`` = the client and ``via`` = the balancer) or ``.reject``.

Stopping: the task is closed at the stop; before the listener closes, it admits the
connections the kernel has already completed (the backlog), so that a client that
connected before the stop is served in the drain instead of being reset. Where this
process alone owns the listener, the kernel is first told to complete no more
handshakes on it, so none can arrive between the last accept and the close.

accept() failing for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses
accepting for ACCEPT_PAUSE_S: no spinning, a warning at most once a second, and
``accept_paused``/``accept_resumed`` events around the episode.

Threads: ``run`` and what it calls run on the acceptor's scheduler thread. ``note_rejection``
and the ProxyAdmission methods may be called from any thread (connection schedulers
call them after a header); a lock keeps the per-reason throttles.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.engine.connection import Connection
from server.engine.listener import refuse_new_connections
from server.engine.proxy_protocol import Accept, ProxyHeader
from server.engine.scheduler import Scheduler
from server.engine.waits import ACCEPT, READ, Sleep, TaskGen, Wait
from server.lib.net import peer_text
from server.lib.networks import Network, parse_networks, trusted
from server.observe.events import Event, event
from server.observe.stats import ADMISSION_BUSY, REJECT_MAX_CONNECTIONS, REJECT_PROXY_PROTOCOL, Stats
from server.observe.throttle import Throttle

log = logging.getLogger("echo.acceptor")

ACCEPT_BATCH = 64  # connections accepted per wake-up before giving other tasks a turn
ACCEPT_PAUSE_S = 0.1
BACKLOG_TAKEN_AT_STOP = 65_535  # at most the largest listen backlog
# With workers, the admission lock may be held by another process (ADMISSION_BUSY): the
# acceptor yields to its scheduler and tries again this often, for at most this long,
# then rejects the connection as max_connections (fail closed: a frozen holder is
# replaced after --worker-timeout).
ADMIT_RETRY_S = 0.001
ADMIT_PATIENCE_S = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Hand-off target: called on the chosen scheduler's thread with the new connection.
StartConnection = Callable[[Scheduler, socket.socket, int, str, str], None]


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """--proxy-protocol (which versions), its timeout, and who may send a header."""

    accept: Accept
    timeout_s: float
    networks: tuple[Network, ...] | None  # None: any source

    @classmethod
    def from_settings(cls, mode: str, timeout_s: float, sources: str) -> ProxyPolicy | None:
        if mode == "off":
            return None
        accept: Accept = "v1" if mode == "v1" else "v2" if mode == "v2" else "any"
        return cls(accept, timeout_s, parse_networks(sources))


class Acceptor:
    def __init__(
        self,
        listener: socket.socket,
        schedulers: Sequence[Scheduler],
        *,
        stats: Stats,
        publish: Callable[[Event], None],
        max_connections: int,
        max_connections_per_ip: int,
        on_ready: Callable[[], None],
        next_id: Callable[[], int],
        proxy: ProxyPolicy | None = None,
        sole_owner: bool = False,
        name: str = "tcp",
        takes_backlog: Callable[[], bool] | None = None,
        home: Scheduler | None = None,
    ) -> None:
        """``start_connection`` (set before ``run``): the hand-off, on the chosen
        scheduler's thread (the listener's Pipeline.start, built once the acceptor's
        ProxyAdmission exists). ``next_id``: the server's one source of connection ids (shared by its listeners).
        ``sole_owner``: no other process accepts on ``listener``, so the stop may make
        the kernel refuse new handshakes on it before taking the backlog (listener.py).
        ``name``: the listener, named in its events (``listener=``) unless it is ``tcp``.
        ``takes_backlog``: asked at the stop; False (a worker handing over to the next
        generation at a reload) leaves the queued connections to whoever accepts next.
        ``home``: the scheduler this acceptor runs on; a connection handed to it starts at
        once, with no trip through its queue."""
        self._listener = listener
        self._takes_backlog = takes_backlog
        self._sole_owner = sole_owner
        self._named: dict[str, Any] = {} if name == "tcp" else {"listener": name}
        self._schedulers = schedulers
        self.start_connection: StartConnection | None = None
        self._stats = stats
        self._publish = publish
        self._max_connections = max_connections
        self._max_per_ip = max_connections_per_ip
        self._on_ready = on_ready
        self._next_scheduler = itertools.cycle(schedulers)
        self._next_id = next_id
        self._home = home
        self._name = name
        self._reject_throttles: dict[str, Throttle] = {}
        self._reject_lock = threading.Lock()
        self._proxy = proxy
        self.proxy_admission = (
            None
            if proxy is None
            else ProxyAdmission(proxy, stats, publish, max_connections_per_ip, self.note_rejection, name)
        )
        self._pause_throttle = Throttle()
        self._paused_errno = 0
        # TCP_NODELAY: set once on the listener, which Linux copies to every connection it
        # accepts; the first connection is asked whether it did (one getsockopt), and if
        # not, each connection is set (a setsockopt per connection, as before).
        self._tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        self._nodelay_each = self._tcp and not _set_nodelay(listener)
        self._nodelay_checked = not self._tcp

    def run(self) -> TaskGen:
        assert self.start_connection is not None, "set start_connection before run()"
        accept = plain_accept(self._listener)
        # A listener shared with other processes (workers) wakes one of them per connection.
        readable = Wait(READ if self._sole_owner else ACCEPT)
        self._on_ready()
        try:
            while True:
                yield readable
                yield from self._accept_batch(accept)
        except GeneratorExit:  # the stop: the listener closes right after this
            if self._takes_backlog is None or self._takes_backlog():
                if self._sole_owner:
                    refuse_new_connections(self._listener)
                self._take_backlog(accept)
            raise
        finally:
            # So that the counts of the rejected events add up to every rejection (but for
            # headers that fail after this, during the drain: Stats still counts them).
            with self._reject_lock:
                for reason, throttle in self._reject_throttles.items():
                    if throttle.held_back:
                        self._publish(
                            event("rejected", level="warning", reason=reason, count=throttle.held_back, **self._named)
                        )
                self._reject_throttles.clear()  # said: later ones start afresh

    def _take_backlog(self, accept: Callable[[], tuple[socket.socket, Any]]) -> None:
        """Admit what the kernel has already accepted: closing the listener would reset
        those connections, which their clients (or a balancer, which cannot retry a
        connection it already made) would see as failures. They are served in the drain."""
        for _ in range(BACKLOG_TAKEN_AT_STOP):
            try:
                sock, address = accept()
            except OSError:
                return  # BlockingIOError: none left
            self._admit(sock, address, last_try=True)

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
            if not self._admit(sock, address):
                yield from self._admit_when_free(sock, address)

    def _admit_when_free(self, sock: socket.socket, address: tuple[object, ...]) -> TaskGen:
        """The admission lock is another process's for now: give the scheduler back and
        try again, for at most ADMIT_PATIENCE_S; then reject (never a wait in a thread)."""
        try:
            for _ in range(int(ADMIT_PATIENCE_S / ADMIT_RETRY_S)):
                yield Sleep(ADMIT_RETRY_S)
                if self._admit(sock, address):
                    return
        except GeneratorExit:  # the stop: this one is ours already, as the backlog's are
            self._admit(sock, address, last_try=True)
            raise
        self._admit(sock, address, last_try=True)

    def _admit(self, sock: socket.socket, address: tuple[object, ...], *, last_try: bool = False) -> bool:
        """Admit or reject the connection (True); False if the admission lock was busy
        (with workers) and it is to be tried again, unless ``last_try`` (then rejected)."""
        ip, peer = peer_text(address)
        proxy = self._proxy
        if proxy is None:
            reason = self._stats.admit(ip, self._max_connections, self._max_per_ip, self._name)
        elif not trusted(ip, proxy.networks):
            self._stats.reject(REJECT_PROXY_PROTOCOL)
            sock.close()
            self.note_rejection(REJECT_PROXY_PROTOCOL, peer, detail="untrusted")
            return True
        else:
            reason = self._stats.reserve(self._max_connections)
        if reason == ADMISSION_BUSY:
            if not last_try:
                return False
            self._stats.reject(REJECT_MAX_CONNECTIONS)
            sock.close()
            self.note_rejection(REJECT_MAX_CONNECTIONS, peer, detail="admission_busy")
            return True
        if reason is not None:
            sock.close()
            self.note_rejection(reason, peer)
            return True
        try:
            sock.setblocking(False)
            if self._nodelay_each:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            elif not self._nodelay_checked:
                self._nodelay_checked = True
                if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                    self._nodelay_each = True  # not inherited here: set it on each
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer may already be gone; its task will find out
        conn_id = self._next_id()
        if proxy is None:  # else once the header has named the client
            self._publish(event("opened", conn_id=conn_id, peer=peer, **self._named))
        scheduler = next(self._next_scheduler)
        assert self.start_connection is not None
        if scheduler is self._home:
            self.start_connection(scheduler, sock, conn_id, peer, ip)
        else:
            scheduler.call_soon_threadsafe(self.start_connection, scheduler, sock, conn_id, peer, ip)
        return True

    def note_rejection(self, reason: str, peer: str, **detail: Any) -> None:
        """Publish a ``rejected`` event at most once a second per reason (any thread)."""
        with self._reject_lock:
            throttle = self._reject_throttles.get(reason)
            if throttle is None:
                throttle = self._reject_throttles[reason] = Throttle()
            held_back = throttle.allow()
        if held_back is None:
            return
        self._publish(
            event("rejected", level="warning", peer=peer, reason=reason, count=held_back + 1, **self._named, **detail)
        )

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


def plain_accept(listener: socket.socket) -> Callable[[], tuple[socket.socket, Any]]:
    """``listener.accept``, less its Python-level cost per call: socket.accept reads the
    listener's ``family`` and ``type``, each an IntEnum conversion, for every connection.
    Here they are read once, and each call is the C-level accept and the socket object
    (measured: ~9.5 -> ~7.9 us per connection). Raises as ``accept`` does."""
    raw_accept = getattr(listener, "_accept", None)  # what socket.accept itself calls
    if raw_accept is None:
        return listener.accept
    family, kind, proto = int(listener.family), int(listener.type), listener.proto
    make = socket.socket

    def accept() -> tuple[socket.socket, Any]:
        fd, address = raw_accept()
        return make(family, kind, proto, fd), address

    return accept


def _set_nodelay(listener: socket.socket) -> bool:
    """TCP_NODELAY on the listening socket, for the connections it will accept."""
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


class ProxyAdmission:
    """The second admission step for PROXY protocol connections (see the module docstring).

    Called on the connection's scheduler thread once its header has been read; any
    thread may call it (Stats, the exchange and note_rejection are thread-safe).
    """

    def __init__(
        self,
        policy: ProxyPolicy,
        stats: Stats,
        publish: Callable[[Event], None],
        max_connections_per_ip: int,
        note_rejection: Callable[..., None],
        listener: str = "tcp",
    ) -> None:
        self.accept = policy.accept
        self.timeout_s = policy.timeout_s
        self._stats = stats
        self._publish = publish
        self._max_per_ip = max_connections_per_ip
        self._note_rejection = note_rejection
        self._listener = listener
        self._named: dict[str, Any] = {} if listener == "tcp" else {"listener": listener}

    def admit(self, conn: Connection, header: ProxyHeader) -> bool:
        """Make the header's client the connection's peer and admit it; False if rejected."""
        if header.source is not None:
            conn.via = conn.peer
            conn.ip, conn.peer = peer_text(header.source)
        reason = self._stats.admit_reserved(conn.ip, self._max_per_ip, self._listener)
        if reason is not None:
            self._note_rejection(reason, conn.peer, **({"via": conn.via} if conn.via else {}))
            return False
        if conn.via:
            self._publish(event("opened", conn_id=conn.id, peer=conn.peer, via=conn.via, **self._named))
        else:  # LOCAL/UNKNOWN: the balancer's own connection (a health check)
            self._publish(event("opened", conn_id=conn.id, peer=conn.peer, proxy="local", **self._named))
        return True

    def reject(self, conn: Connection, kind: str, problem: str) -> None:
        """The header failed (``kind``: malformed, oversized, truncated or late)."""
        self._stats.reject_reserved(REJECT_PROXY_PROTOCOL)
        self._note_rejection(REJECT_PROXY_PROTOCOL, conn.peer, detail=kind, problem=problem)
