"""EchoServer: the listener, the schedulers on a ThreadPoolExecutor, and their lifecycle.

    with EchoServer(Config(port=0)) as server:      # start() binds, listens, starts
        host, port = server.server_address[:2]
        ...                                          # server.ready is set once accepting

The pool hosts ``loops`` connection schedulers, and with ``loops`` > 1 one acceptor
scheduler besides (with one, the acceptors share it); each is a generator-task loop (see
scheduler.py). The server serves a tuple of listeners (listeners.py: built from Config,
or given: a test's extra listener, a worker's inherited sockets); each is served by
tasks on the acceptors' scheduler (an Acceptor per stream listener, starting each new
connection on its own scheduler directly or handing it to another round-robin through
that scheduler's queue + wake-up, where the listener's Pipeline runs it; one UdpEcho task
per UDP socket). Connection ids come from one counter for all listeners (``next_id``).
``start`` raises tls.TlsError, before opening anything, if the certificate or key cannot
be used; ``reload_tls`` (SIGHUP) re-reads them.

Threads: ``start``, ``shutdown``, ``close`` and ``serve_forever`` may be called from
any thread (a lock orders them); ``shutdown`` is idempotent and blocks until stopped.
``stats``, ``ready``, ``stopped``, ``draining`` and ``failure`` may be read from anywhere.

Stopping: stop accepting (the acceptors take their backlog and end; the UDP task ends at
once, or at the grace deadline when it shares the one scheduler) -> connections are echoed until they
close or shutdown_timeout passes -> then they stop reading, flush what is owed, send
FIN and close, for at most FINAL_FLUSH_S, after which what is left is reset -> the
schedulers return and the pool shuts down -> ``stopped`` event -> the admin endpoint
closes in what is left of one overall deadline, shutdown_timeout + STOP_BUDGET_S from the
stop (at least ADMIN_CLOSE_MIN_S). So shutdown() takes at most shutdown_timeout +
STOP_BUDGET_S, unless a scheduler thread is stuck in a bug: then it waits STOP_MARGIN_S
more for it, logs an error and returns anyway.

Failure: a scheduler thread that dies, or the acceptor task ending, outside a stop is
fatal. It is logged once with its traceback, published as a ``failed`` event, /healthz
turns 503 (``healthy`` is False), and the callbacks given to ``add_failure_callback``
are called (the CLI stops the process with exit 1, so an orchestrator restarts it):
once, on the failing thread (the acceptor's or the pool's), so they only record and
wake (failure.py keeps these rules for EchoServer and Supervisor alike).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any

import server
from server.accounting import ConnectionAccounts
from server.config import Config
from server.engine.banner import Banner
from server.engine.connection import Connection
from server.engine.heartbeat import most_stalled, stall_problem
from server.engine.listener import backlog_capped, fit_fd_limit
from server.engine.reflection import reflect
from server.engine.scheduler import Scheduler
from server.engine.tls import TlsContext
from server.engine.waits import every
from server.failure import FailureAttributes, FailureRecord
from server.lib.net import format_address
from server.listeners import (
    Listener,
    ListenerAddresses,
    ListenerSpec,
    ServerParts,
    listener_specs,
    load_tls,
    open_listeners,
    serve,
)
from server.live_connections import LocalConnections
from server.observe import admin as admin_module
from server.observe.admin import AdminServer
from server.observe.connections import ASK_TIMEOUT_S, WORKER_ASK_TIMEOUT_S
from server.observe.events import Event, event
from server.observe.exchange import Exchange, get_exchange
from server.observe.faults_api import load_token
from server.observe.stats import Stats, StatsSnapshot

if TYPE_CHECKING:
    from server.faults.draw import FaultDraw
    from server.faults.policy import FaultPolicy
    from server.faults.refuse import Refusal

log = logging.getLogger("echo.server")

FINAL_FLUSH_S = 1.0  # after the drain: time to flush what is owed before resetting
ADMIN_CLOSE_MIN_S = 0.2  # the admin's close after the drain (stuck handlers are cut before it ends)
# The whole stop, past shutdown_timeout: the final flush, then the admin's close. The
# CLI promises an exit within shutdown_timeout + 1.5 s; the rest is the log's last lines.
STOP_BUDGET_S = FINAL_FLUSH_S + ADMIN_CLOSE_MIN_S
FOLD_INTERVAL_S = 1.0  # how often long connections' bytes reach Stats
STOP_MARGIN_S = 5.0  # past every deadline, how long shutdown() waits for a thread
# Descriptors besides connections: stdio, the echo listener, the log file, the signal
# wake-up pair and a few spare; each scheduler holds an epoll fd and a wake-up pair.
FD_BASE = 16
FD_PER_SCHEDULER = 3


def admin_close_budget(deadline: float) -> float:
    """What is left of a stop's overall deadline for the admin's close, within bounds."""
    return min(admin_module.CLOSE_TIMEOUT_S, max(ADMIN_CLOSE_MIN_S, deadline - time.monotonic()))


class EchoServer(FailureAttributes, ListenerAddresses):
    def __init__(
        self,
        config: Config,
        *,
        stats: Stats | None = None,
        exchange: Exchange | None = None,
        specs: tuple[ListenerSpec, ...] | None = None,
        listeners: tuple[Listener, ...] | None = None,
        next_id: Callable[[], int] | None = None,
        worker: int | None = None,
    ) -> None:
        """``specs``: the listeners to open (default: what ``config`` asks for, see
        listeners.py); ``listeners``: already-open ones to serve instead (a worker's,
        inherited from the supervisor, shared with the next generation); closed at
        shutdown. ``next_id``: where connection ids come from (default: 1, 2, 3...).
        ``worker``: this process's worker slot under --workers (reflection shows it; a
        fault rule's ``worker`` matches it)."""
        self.config = config
        self._specs = specs if specs is not None else listener_specs(config)
        self._given = listeners
        self._handing_over = False  # set by shutdown(hand_over=True), read by the acceptors
        self._next_id = next_id or itertools.count(1).__next__
        self.stats = stats or Stats()
        self.exchange = exchange or get_exchange("events")
        self._accounts = ConnectionAccounts(self.stats, self.publish)
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.listeners: tuple[Listener, ...] = ()
        self.server_address: tuple[Any, ...] = ("", 0)
        self._lock = threading.Lock()
        self._started = False
        self._draining = False
        self._pool: ThreadPoolExecutor | None = None
        self._acceptor_loop: Scheduler | None = None
        self._loops: list[Scheduler] = []
        self._schedulers: tuple[Scheduler, ...] = ()  # every scheduler the pool runs
        self._futures: list[Future[None]] = []
        self.admin: AdminServer | None = None
        self.worker = worker
        self.connections: LocalConnections | None = None  # GET /connections, once started
        self._hostname = socket.gethostname()
        self.tls: TlsContext | None = None
        # Orders "ready" against "stopping" (the acceptor's thread vs shutdown's).
        self._ready_lock = threading.Lock()
        self._failures = FailureRecord(log, self.publish, self._unready)
        # Faults on demand (server/faults/): None when off, and then nothing below looks.
        # (Imported only when on: with faults off, not one module of server/faults/ is loaded.)
        self.faults: FaultPolicy | None = None
        self._fault_draw: FaultDraw | None = None
        if config.faults == "on":
            from server.faults.draw import FaultDraw
            from server.faults.policy import FaultPolicy

            self.faults = FaultPolicy(config.faults_rules or (), seed=config.faults_seed)
            self._fault_draw = FaultDraw(self.faults, self.publish, worker)
        self.admin_token = load_token(config.admin_token_file) if config.admin_token_file else None
        self._refusal: Refusal | None = None

    @property
    def draining(self) -> bool:
        """True from the moment shutdown begins."""
        return self._draining

    def is_ready(self) -> bool:
        return self.ready.is_set()

    def oldest_loop(self) -> tuple[str, float]:
        """The scheduler that has gone longest without a turn, and how long (any thread)."""
        return most_stalled(self._schedulers)

    def stalled(self) -> str | None:
        """Why /healthz fails for liveness: a loop stalled over heartbeat_timeout (any thread)."""
        return stall_problem(*self.oldest_loop(), self.config.heartbeat_timeout)

    def snapshot(self) -> StatsSnapshot:
        return self.stats.snapshot()

    def publish(self, record: Event) -> None:
        self.exchange.send(record)

    # --- lifecycle (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Bind, listen and start the threads. Raises ListenError if a port is taken."""
        with self._lock:
            if self.stopped.is_set():
                raise RuntimeError("this EchoServer was shut down; make a new one")
            if self._started:
                return
            config = self.config
            max_connections, clamped = fit_fd_limit(config.max_connections, self._fd_headroom(config))
            if clamped:
                log.warning("%s", clamped)
                config = self.config = dataclasses.replace(config, max_connections=max_connections)
            capped = backlog_capped(config.backlog)
            if capped:
                log.warning("%s", capped)
            specs = self._specs if self._given is None else tuple(listener.spec for listener in self._given)
            tls = load_tls(config, specs)  # TlsError: nothing opened yet
            listeners = self._given if self._given is not None else open_listeners(specs, config.backlog)
            self.server_address = listeners[0].address  # (the CLI: the echo port opened, the admin's did not)
            if config.admin_port is not None:
                try:
                    self.admin = AdminServer(self, config.effective_admin_host, config.admin_port)
                except OSError:
                    for listener in listeners:
                        listener.sock.close()
                    raise
            self.listeners, self.tls = listeners, tls
            for listener in listeners:
                self.stats.add_listener(listener.name)
            self._started = True
            self.publish(event("started", loops=config.loops, max_connections=config.max_connections))
            if self.admin is not None:
                self.admin.start()
            self.publish(event("listening", **self._addresses()))

            # With one connection scheduler (the default: one interpreter is one core) the
            # acceptors run on it too: a new connection then costs no wake-up of another
            # thread and no GIL hand-off (measured: see docs/design.md). With more, the
            # acceptors get a scheduler of their own, handing connections out round-robin.
            shared = config.loops == 1
            self._loops = [
                Scheduler(
                    f"loop-{i}",
                    buffer_size=config.buffer_size,
                    on_critical_exit=self._failures.fail if shared else None,
                )
                for i in range(config.loops)
            ]
            self._acceptor_loop = (
                self._loops[0] if shared else Scheduler("acceptor", buffer_size=0, on_critical_exit=self._failures.fail)
            )
            self._schedulers = tuple(self._loops) if shared else (self._acceptor_loop, *self._loops)
            self._pool = ThreadPoolExecutor(max_workers=len(self._schedulers), thread_name_prefix="echo")
            for loop in self._loops:
                loop.spawn_threadsafe(every(FOLD_INTERVAL_S, functools.partial(self._accounts.fold, loop)), daemon=True)
            names = tuple(listener.name for listener in listeners if listener.spec.streams)
            timeout = ASK_TIMEOUT_S if self.worker is None else WORKER_ASK_TIMEOUT_S
            self.connections = LocalConnections(self._loops, names, self.worker, self._reflect, timeout)
            parts = ServerParts(
                config=config,
                stats=self.stats,
                publish=self.publish,
                loops=self._loops,
                next_id=self._next_id,
                on_close=self._accounts.closed,
                on_ready=self._on_ready,
                banner=self._banner(config),
                tls=tls,
                sole_owner=self._given is None,  # a worker's are shared with the next generation
                takes_backlog=lambda: not self._handing_over,
                faults=self._fault_draw,
                home=self._acceptor_loop,
            )
            for index, listener in enumerate(listeners):
                for serving in serve(listener, parts, first=index == 0):
                    self._acceptor_loop.spawn_threadsafe(
                        serving.task, serving.sock, daemon=serving.daemon, critical=serving.critical
                    )
            if self.faults is not None:
                from server.faults.refuse import Refusal

                refusable = {listener.name: listener.sock for listener in listeners if listener.spec.streams}
                self._refusal = Refusal(self.faults, refusable, self._acceptor_loop)
                self._refusal.start()
            if config.stats_interval > 0:
                self._acceptor_loop.spawn_threadsafe(every(config.stats_interval, self._publish_stats), daemon=True)
            self._futures = [self._pool.submit(loop.run) for loop in self._schedulers]
            for loop, future in zip(self._schedulers, self._futures, strict=True):
                future.add_done_callback(functools.partial(self._loop_done, loop.name))

    def _addresses(self) -> dict[str, Any]:
        """The ``listening`` event's fields: ``address`` (the first listener's), each other
        listener's as ``NAME_address``, and the admin's."""
        addresses: dict[str, Any] = {"address": format_address(self.server_address)}
        if self.admin is not None:
            addresses["admin_address"] = format_address(self.admin.address)
        for listener in self.listeners[1:]:
            addresses[f"{listener.name}_address"] = format_address(listener.address)
        return addresses

    def reload_tls(self) -> bool:
        """SIGHUP (main thread): re-read the TLS certificate and key for new connections.
        False if TLS is off or the files were unusable (then the old ones stay)."""
        return self.tls is not None and self.tls.reload()

    def serve_forever(self) -> None:
        """Start if needed, then block until the server has stopped (see shutdown)."""
        self.start()
        self.stopped.wait()

    def shutdown(self, *, hand_over: bool = False) -> None:
        """Stop accepting, drain, stop. Idempotent; returns once stopped. ``hand_over``
        (a worker at a reload): leave the connections the kernel has queued on the shared
        listeners to the next generation instead of taking them into this drain."""
        self._handing_over = hand_over
        with self._lock:
            if not self._started or self.stopped.is_set():
                self.stopped.set()
                return
            with self._ready_lock:
                self._draining = True
                self.ready.clear()
            config = self.config
            assert self._acceptor_loop is not None and self._pool is not None
            self.publish(event("stopping", shutdown_timeout_s=config.shutdown_timeout))
            log.debug("stopping: no new connections; draining for up to %.1f s", config.shutdown_timeout)

            now = time.monotonic()
            deadline = now + config.shutdown_timeout + STOP_BUDGET_S
            if self._refusal is not None:
                self._refusal.stop()  # from here on the listeners' filter is the stop's
            grace = now + config.shutdown_timeout
            abort = grace + FINAL_FLUSH_S
            if self._acceptor_loop not in self._loops:
                self._acceptor_loop.request_stop(now, now)
                wait_futures(self._futures[:1], timeout=STOP_MARGIN_S)
            # (A shared scheduler closes its acceptors, daemon tasks, at once: the same stop.)
            for loop in self._loops:
                loop.request_stop(grace, abort)
            _, stuck = wait_futures(self._futures, timeout=abort - time.monotonic() + STOP_MARGIN_S)
            if stuck:
                log.error("%d scheduler thread(s) did not stop in time", len(stuck))
            self._pool.shutdown(wait=not stuck)
            final = self.stats.snapshot()
            log.debug(
                "stopped: %d accepted, %d rejected, %d bytes echoed, %d errors",
                final.accepted,
                final.rejected_total,
                final.bytes_sent,
                final.errors,
            )
            self.publish(event("stopped", **final.as_dict()))
            if self.admin is not None:  # last: probes and /events watchers see the drain
                self.admin.close(admin_close_budget(deadline))
            self.stopped.set()

    def close(self) -> None:
        self.shutdown()

    def __enter__(self) -> EchoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- callbacks on scheduler threads ----------------------------------------------------

    def _on_ready(self) -> None:  # acceptor thread
        with self._ready_lock:
            if self._draining or self.failure is not None:  # never ready after "stopping" or "failed"
                return
            self.ready.set()
            self.publish(event("ready", address=format_address(self.server_address)))

    def _loop_done(self, name: str, future: Future[None]) -> None:  # the pool's thread
        error = future.exception()
        if error is None and self._draining:
            return  # a scheduler returning after the stop request: as planned
        self._failures.fail(f"scheduler {name} {'failed' if error else 'returned before the stop'}", error)

    def _unready(self) -> None:  # the first failure's thread
        with self._ready_lock:
            self.ready.clear()

    @staticmethod
    def _fd_headroom(config: Config) -> int:
        """File descriptors the server holds besides its echo connections."""
        schedulers = config.loops + 1  # and the acceptor's
        # Admin: its clients, one more being accepted to evict for, listener, selector, wake-up pair.
        admin = admin_module.MAX_CLIENTS + 5 if config.admin_port is not None else 0
        return FD_BASE + FD_PER_SCHEDULER * schedulers + admin

    def _publish_stats(self) -> None:  # acceptor thread
        self.publish(event("stats", **self.stats.snapshot().as_dict()))

    def _banner(self, config: Config) -> Banner | None:
        if config.banner is None:
            return None
        return Banner(config.banner, server.__version__, self._hostname, self.worker)

    def _reflect(self, sock: socket.socket, conn: Connection) -> dict[str, Any]:  # the connection's scheduler thread
        return reflect(sock, conn, worker=self.worker, hostname=self._hostname)
