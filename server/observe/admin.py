"""The admin HTTP endpoint: its listener, its connections, its limits and its stop.

    GET /          a plain-text index            GET /metrics  Prometheus text
    GET /healthz   200 healthy, 503 failed/stalled  GET /stats    the Stats snapshot as JSON
    GET /readyz    200 ready, 503 draining       GET /events   live events, JSON lines (chunked)

(HEAD works wherever GET does; the requests themselves are served by
``server.admin_http``.) It only reads server state: ``Stats.snapshot()``, the
ready/draining flags, and the events Exchange. Nothing here can make the echo path wait.

Limits, so that the admin port cannot be used to fail the health checks:

- At most MAX_CLIENTS connections at once, each served by its own thread. A connection
  is WAITING (for its next request), BUSY (answering one) or a STREAM (/events).
- A request must arrive whole, headers included, within REQUEST_DEADLINE_S of the
  moment the connection started waiting for it (its accept, or the end of the previous
  answer on a keep-alive connection): a total deadline, not a per-recv timeout, so a
  client trickling a byte at a time is dropped like a silent one. Writing an answer has
  RESPONSE_TIMEOUT_S. A request line without an HTTP version (HTTP/0.9) is a 400.
- At most MAX_STREAMS of the connections are /events streams; one more gets a 503.
  So at least MAX_CLIENTS - MAX_STREAMS connections are always non-stream ones.
- When all MAX_CLIENTS are taken, a new connection is still served: the non-stream
  connection that has been in its current phase longest (in practice the oldest client
  still not done sending its request, or the oldest idle keep-alive) is closed to make
  room. A probe, being newest, is the last to go. Only if every connection is a stream
  (possible only if MAX_STREAMS >= MAX_CLIENTS) is the newcomer closed unanswered.
  (A flood of more than MAX_CLIENTS new connections within one probe's round trip can
  still push the probe out: that is a connection flood, for a firewall to stop.)
- An /events reader has a small socket send buffer (STREAM_SNDBUF) and WATCHER_QUEUE
  events queued for it at the server; when that queue overflows, the reader is
  disconnected at once, whatever it has not read yet. A reader that accepts nothing for
  STREAM_SEND_TIMEOUT_S, or sends anything after its request, is disconnected too.
- accept() failing for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses
  accepting for ACCEPT_PAUSE_S. Each kind of refusal is logged at most once a second.

Stopping: ``close(timeout)`` works against one overall deadline: it closes idle
connections at once, ends every stream after what is already queued for it, lets
answers in progress finish, shuts down the sockets of handlers still running shortly
before the deadline (so they unblock), and returns by the deadline.

Threads: ``start`` and ``close`` from the thread that owns the server's lifecycle. The
admin thread owns the listener and its selector; it accepts, evicts and force-closes,
and is the only one that watches stream sockets. Handler threads own their sockets,
except that a stream's socket, watched by the admin thread, is closed by the admin
thread once its handler releases it.
The connection registry (``_conns``, each connection's phase) is behind ``_lock``; a
socket is shut down from another thread only under that lock and only while its
connection is registered, and its owner unregisters it (under the lock) before closing
it, so no thread ever shuts down a reused descriptor. Other threads ask the admin
thread for things through ``_requests`` plus a wake-up socketpair.
"""

from __future__ import annotations

import errno
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from server.lib.net import format_address, open_listener
from server.lib.waker import Waker
from server.observe.admin_conn import Conn, Watcher
from server.observe.exchange import Exchange
from server.observe.history import History, HistorySampler
from server.observe.stats import StatsSnapshot
from server.observe.throttle import Throttle

log = logging.getLogger("echo.admin")

MAX_CLIENTS = 64  # admin connections at once (each is a thread)
MAX_STREAMS = 16  # of which /events streams
REQUEST_DEADLINE_S = 5.0  # to send a whole request (and the idle time allowed before it)
RESPONSE_TIMEOUT_S = 5.0  # to take one answer
STREAM_SEND_TIMEOUT_S = 10.0  # an /events reader that accepts nothing for this long is dropped
STREAM_SNDBUF = 8192  # bytes asked of the kernel for a stream's send buffer (Linux doubles it)
WATCHER_QUEUE = 1000  # events an /events reader may fall behind before it is cut off
STREAM_FLUSH_S = 0.02  # an /events reader gets what was published in this window as one chunk
ACCEPT_BATCH = 16
ACCEPT_PAUSE_S = 0.1
CLOSE_TIMEOUT_S = 1.0  # the whole of close(): streams flushed, answers finished, threads joined
FORCE_MARGIN_S = 0.2  # before the close deadline, stuck handlers' sockets are shut down
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Request = Literal["stop", "watch", "release", "drop"]


class ServerView(Protocol):
    """What the admin endpoint may see of the echo server (read-only)."""

    exchange: Exchange

    @property
    def draining(self) -> bool: ...

    @property
    def healthy(self) -> bool:
        """False once a server thread died: /healthz says 503 so the orchestrator restarts us."""
        ...

    def is_ready(self) -> bool: ...

    def stalled(self) -> str | None:
        """A scheduler (or a worker's) that stopped turning, named: /healthz says 503."""
        ...

    def snapshot(self) -> StatsSnapshot: ...


class AdminServer:
    def __init__(self, view: ServerView, host: str, port: int) -> None:
        self._view = view
        self._listener = open_listener(host, port, backlog=128)
        self.address = self._listener.getsockname()
        self._lock = threading.Lock()
        self._conns: set[Conn] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._stopping = threading.Event()  # set with _closing: streams stop gathering bursts
        self._loop_done = False
        self._stream_refusals = Throttle()  # under _lock
        self._requests: queue.SimpleQueue[tuple[Request, Conn | None]] = queue.SimpleQueue()
        try:
            self._waker = Waker()
        except OSError:
            self._listener.close()
            raise
        self._evictions = Throttle()  # admin thread
        self._refusals = Throttle()  # admin thread
        self._pauses = Throttle()  # admin thread
        self._paused_errno = 0
        self._serve_connection: Callable[[AdminServer, Conn], None] = lambda admin, conn: None
        self._thread = threading.Thread(target=self._serve, name="admin", daemon=True)
        # The dashboard's last five minutes, kept whether or not anyone is watching.
        self.history = History()
        self._sampler = HistorySampler(view.snapshot, self.history)

    @property
    def view(self) -> ServerView:
        return self._view

    def start(self) -> None:
        from server.observe.admin_http import serve_connection  # it imports this module for its limits

        self._serve_connection = serve_connection
        self._thread.start()
        self._sampler.start()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop within ``timeout`` seconds in all (see the module docstring)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._sampler.stop(timeout / 4)
        with self._lock:
            self._closing = True
            for conn in list(self._conns):
                if conn.phase == "waiting":
                    self._drop_locked(conn)
                elif conn.watcher is not None:
                    conn.watcher.end()
        self._post("stop", None)
        if self._thread.ident is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        loop_stopped = not self._thread.is_alive()
        with self._lock:
            threads = [t for t in self._threads if t.ident is not None]
        force_at = deadline - min(FORCE_MARGIN_S, timeout / 4)
        for thread in threads:
            thread.join(max(0.0, force_at - time.monotonic()))
        with self._lock:
            stuck = list(self._conns)
            for conn in stuck:
                self._drop_locked(conn)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = sum(t.is_alive() for t in threads) + (not loop_stopped)
        if stuck or running:
            log.warning(
                "admin: closed %d connection(s) still busy at the stop deadline; %d thread(s) still running",
                len(stuck),
                running,
            )
        if loop_stopped:
            self._listener.close()
            self._waker.close()

    # --- the admin thread ------------------------------------------------------------

    def _serve(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                selector.register(self._waker.reader, selectors.EVENT_READ)
                self._loop(selector)
        except Exception:
            log.exception("admin: the accept loop failed; the admin endpoint is down")
        finally:
            with self._lock:
                self._loop_done = True
            self._run_requests(None)  # close what was released after the last turn

    def _loop(self, selector: selectors.BaseSelector) -> None:
        resume_at: float | None = None
        while True:
            timeout = None if resume_at is None else max(0.0, resume_at - time.monotonic())
            for key, _ in selector.select(timeout):
                if key.fileobj is self._waker.reader:
                    self._waker.drain()
                    if not self._run_requests(selector):
                        return
                elif key.fileobj is self._listener:
                    if resume_at is None and self._accept_batch():
                        selector.unregister(self._listener)
                        resume_at = time.monotonic() + ACCEPT_PAUSE_S
                else:
                    self._stream_spoke(selector, key.data)
            if resume_at is not None and time.monotonic() >= resume_at:
                selector.register(self._listener, selectors.EVENT_READ)
                resume_at = None

    def _accept_batch(self) -> bool:
        """Accept what is waiting; True if accept() ran out of resources (pause)."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return False
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:
                    self._note_pause(error)
                    return True
                continue  # ECONNABORTED and friends: that one connection is gone
            if self._paused_errno:
                log.info("admin: accepting again")
                self._paused_errno = 0
            self._admit(sock, address)
        return False

    def _admit(self, sock: socket.socket, address: Any) -> None:
        conn = Conn(sock, address, time.monotonic())
        thread = threading.Thread(target=self._handle, args=(conn,), name="admin-conn", daemon=True)
        victim: Conn | None = None
        with self._lock:
            if self._closing:
                sock.close()
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._conns) >= MAX_CLIENTS:
                victim = min((c for c in self._conns if c.phase != "stream"), key=lambda c: c.since, default=None)
                if victim is None:
                    sock.close()
                    self._say(
                        self._refusals, "admin: %d /events streams hold every connection; refused one", MAX_CLIENTS
                    )
                    return
                self._drop_locked(victim)
            self._conns.add(conn)
            self._threads.append(thread)
        if victim is not None:
            self._say(
                self._evictions,
                "admin: %d connections open; closed the one %s longest (%s) to make room",
                MAX_CLIENTS,
                "waiting" if victim.phase == "waiting" else "answering",
                _peer(victim.peer),
            )
        try:
            thread.start()
        except RuntimeError:  # no more threads: refuse this one
            with self._lock:
                self._conns.discard(conn)
                self._threads.remove(thread)
            sock.close()
            self._say(self._refusals, "admin: cannot start a thread; refused a connection (%d open)", MAX_CLIENTS)

    def _run_requests(self, selector: selectors.BaseSelector | None) -> bool:
        """Carry out what other threads asked; False once asked to stop."""
        going = True
        while True:
            try:
                kind, conn = self._requests.get_nowait()
            except queue.Empty:
                return going
            if conn is None:  # "stop"
                going = False
            elif kind == "watch" and selector is not None:
                selector.register(conn.sock, selectors.EVENT_READ, conn)
                conn.watched = True
            elif kind == "release":
                if conn.watched and selector is not None:
                    selector.unregister(conn.sock)
                conn.watched = False
                conn.sock.close()
            elif kind == "drop":
                with self._lock:
                    if conn in self._conns:
                        self._drop_locked(conn)

    def _stream_spoke(self, selector: selectors.BaseSelector, conn: Conn) -> None:
        """An /events reader sent something or hung up: end its stream."""
        if not conn.watched:
            return  # released earlier in this same turn: its socket is closed
        selector.unregister(conn.sock)
        conn.watched = False
        with self._lock:
            if conn in self._conns:
                self._drop_locked(conn)

    def _note_pause(self, error: OSError) -> None:
        self._paused_errno = error.errno or -1
        held_back = self._pauses.allow()
        if held_back is not None:
            log.warning(
                "admin: accept() failed: %s; pausing accepts for %.0f ms (%d more since last said)",
                error.strerror,
                ACCEPT_PAUSE_S * 1000,
                held_back,
            )

    # --- any thread --------------------------------------------------------------------

    def _drop_locked(self, conn: Conn) -> None:
        """Unregister ``conn`` and shut its socket down so its handler unblocks (holding _lock)."""
        self._conns.discard(conn)
        if conn.watcher is not None:
            conn.watcher.end()
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def _post(self, kind: Request, conn: Conn | None) -> None:
        self._requests.put((kind, conn))
        self._waker.wake()

    @staticmethod
    def _say(throttle: Throttle, message: str, *args: object) -> None:
        held_back = throttle.allow()
        if held_back is not None:
            log.warning(message + " (%d more since last said)", *args, held_back)

    # --- handler threads ---------------------------------------------------------------

    def _handle(self, conn: Conn) -> None:
        try:
            self._serve_connection(self, conn)
        except Exception:
            log.exception("admin connection from %s failed", _peer(conn.peer))
        finally:
            with self._lock:
                self._conns.discard(conn)
                via_loop = conn.wants_watch and not self._loop_done
                if via_loop:
                    self._requests.put(("release", conn))
            if via_loop:
                self._waker.wake()
            else:
                conn.sock.close()

    def begin_wait(self, conn: Conn) -> bool:
        """The handler waits for the next request; False if it should hang up instead."""
        now = time.monotonic()
        conn.deadline = now + REQUEST_DEADLINE_S
        with self._lock:
            if self._closing or conn not in self._conns:
                return False
            conn.phase, conn.since = "waiting", now
            return True

    def begin_busy(self, conn: Conn) -> None:
        with self._lock:
            conn.phase, conn.since = "busy", time.monotonic()

    def begin_stream(self, conn: Conn) -> bool:
        """Take a stream slot; False (and a throttled warning) if none is free."""
        with self._lock:
            streams = sum(c.phase == "stream" for c in self._conns)
            if self._closing or conn not in self._conns or streams >= MAX_STREAMS:
                if not self._closing:
                    self._say(self._stream_refusals, "admin: %d /events streams open; refused one more", streams)
                return False
            conn.phase, conn.since = "stream", time.monotonic()
            return True

    def watch(self, conn: Conn, subscribed: Callable[[], None], deliver: Callable[[bytes], None]) -> None:
        """Stream events to ``deliver`` (JSON lines, what is queued at once in one call) until
        the server stops or the reader falls behind. ``subscribed`` runs once the watcher
        is attached: no event after it is missed."""
        watcher = Watcher(WATCHER_QUEUE, lambda: self._post("drop", conn))
        with self._lock:
            conn.watcher = watcher
            if self._closing or conn not in self._conns:
                watcher.end()
            elif not self._loop_done:
                conn.wants_watch = True
                self._requests.put(("watch", conn))
        self._waker.wake()
        with self._view.exchange.subscribed(watcher):
            subscribed()
            while True:
                lines, last = watcher.next_burst(lambda: self._stopping.wait(STREAM_FLUSH_S))
                if watcher.overflowed:
                    return
                if lines:
                    deliver(lines)
                if last:
                    return


def _peer(address: Any) -> str:
    return format_address(address) if isinstance(address, tuple) and len(address) >= 2 else str(address)
