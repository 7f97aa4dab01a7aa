"""EchoServer: the listener, the schedulers on a ThreadPoolExecutor, and their lifecycle.

    with EchoServer(Config(port=0)) as server:      # start() binds, listens, starts
        host, port = server.server_address[:2]
        ...                                          # server.ready is set once accepting

The pool hosts ``loops`` connection schedulers plus one acceptor scheduler; each is a
generator-task loop (see scheduler.py). New connections go from the acceptor to the
connection schedulers round-robin, through each scheduler's queue + wake-up.
Optional listeners run on the same schedulers: TLS (``tls_port``) is a second Acceptor
task on the acceptor scheduler handing off to tls_echo tasks; UDP (``udp_port``) is one
udp.UdpEcho task there. ``start`` raises tls.TlsError, before opening anything, if the
certificate or key cannot be used; ``reload_tls`` (SIGHUP) re-reads them.

Threads: ``start``, ``shutdown``, ``close`` and ``serve_forever`` may be called from
any thread (a lock orders them); ``shutdown`` is idempotent and blocks until stopped.
``stats``, ``ready``, ``stopped``, ``draining`` and ``failure`` may be read from anywhere.

Stopping: stop accepting (the listeners close, the UDP task ends) -> connections are echoed until they
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

import functools
import logging
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from server.config import Config
from server.engine.acceptor import Acceptor, ProxyAdmission, ProxyPolicy
from server.engine.banner import Banner, local_address
from server.engine.echo import Connection, EchoWaits, echo, proxied_echo
from server.engine.listener import ListenError, backlog_capped, fit_fd_limit, format_address, open_listener
from server.engine.scheduler import Scheduler, every, most_stalled, stall_problem
from server.engine.tls import TlsContext
from server.engine.tls_echo import HandshakeFailures, TlsWaits, start_tls_connection
from server.engine.udp import UdpEcho, open_udp
from server.failure import FailureAttributes, FailureRecord
from server.observe import admin as admin_module
from server.observe.admin import AdminServer
from server.observe.events import Event, event
from server.observe.exchange import Exchange, get_exchange
from server.observe.stats import Stats, StatsSnapshot

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


class EchoServer(FailureAttributes):
    def __init__(
        self,
        config: Config,
        *,
        stats: Stats | None = None,
        exchange: Exchange | None = None,
        listener: socket.socket | None = None,
        tls_listener: socket.socket | None = None,
        udp_socket: socket.socket | None = None,
    ) -> None:
        """``listener`` (and ``tls_listener``, ``udp_socket`` with tls_port, udp_port set):
        already-open sockets to serve (a worker's, inherited from the supervisor) instead of
        opening them on config.host:port (tls_port, udp_port); closed at shutdown."""
        self.config = config
        self._given_listener = listener
        self._given_tls_listener = tls_listener
        self._given_udp_socket = udp_socket
        self.stats = stats or Stats()
        self.exchange = exchange or get_exchange("events")
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.server_address: tuple[str, int] | tuple[str, int, int, int] = ("", 0)
        self._lock = threading.Lock()
        self._started = False
        self._draining = False
        self._pool: ThreadPoolExecutor | None = None
        self._acceptor_loop: Scheduler | None = None
        self._loops: list[Scheduler] = []
        self._futures: list[Future[None]] = []
        self.admin: AdminServer | None = None
        self._waits = EchoWaits.from_timeouts(config.idle_timeout, config.write_stall_timeout)
        self._banner = Banner(config.banner) if config.banner is not None else None
        self._proxy_admission: ProxyAdmission | None = None  # set by start() with --proxy-protocol
        # The optional listeners (see tls_echo.py, udp.py); their addresses once started.
        self.tls: TlsContext | None = None
        self.tls_address: tuple[Any, ...] | None = None
        self.udp_address: tuple[Any, ...] | None = None
        # Orders "ready" against "stopping" (the acceptor's thread vs shutdown's).
        self._ready_lock = threading.Lock()
        self._failures = FailureRecord(log, self.publish, self._unready)

    @property
    def draining(self) -> bool:
        """True from the moment shutdown begins."""
        return self._draining

    def is_ready(self) -> bool:
        return self.ready.is_set()

    def oldest_loop(self) -> tuple[str, float]:
        """The scheduler that has gone longest without a turn, and how long (any thread)."""
        return most_stalled((self._acceptor_loop, *self._loops))

    def stalled(self) -> str | None:
        """Why /healthz fails for liveness: a loop stalled over heartbeat_timeout (any thread)."""
        return stall_problem(*self.oldest_loop(), self.config.heartbeat_timeout)

    def snapshot(self) -> StatsSnapshot:
        return self.stats.snapshot()

    def publish(self, record: Event) -> None:
        self.exchange.send(record)

    # --- lifecycle (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Bind, listen and start the threads. Raises ListenError if the port is taken."""
        with self._lock:
            if self.stopped.is_set():
                raise RuntimeError("this EchoServer was shut down; make a new one")
            if self._started:
                return
            config, clamped = fit_fd_limit(self.config, self._fd_headroom(self.config))
            if clamped:
                log.warning("%s", clamped)
            self.config = config
            capped = backlog_capped(config.backlog)
            if capped:
                log.warning("%s", capped)
            tls = TlsContext.load(config) if config.tls_port is not None else None  # TlsError: nothing opened yet
            listener = self._given_listener or open_listener(config.host, config.port, config.backlog)
            self.server_address = listener.getsockname()
            tls_listener, udp_sock = self._open_optional_listeners(config, listener)
            self.tls = tls
            if config.admin_port is not None:
                try:
                    self.admin = AdminServer(self, config.effective_admin_host, config.admin_port)
                except OSError:
                    for sock in (listener, tls_listener, udp_sock):
                        if sock is not None:
                            sock.close()
                    raise
            self._started = True
            self.publish(event("started", loops=config.loops, max_connections=config.max_connections))
            addresses: dict[str, Any] = {"address": format_address(self.server_address)}
            if self.admin is not None:
                addresses["admin_address"] = format_address(self.admin.address)
                self.admin.start()
            said = " and admin on ".join(addresses.values())
            for name, address in (("tls_address", self.tls_address), ("udp_address", self.udp_address)):
                if address is not None:
                    addresses[name] = format_address(address)
                    said += f"; {name[:3].upper()} echo on {addresses[name]}"
            self.publish(event("listening", **addresses))
            # This and the "stopping"/"stopped" lines below restate their events: DEBUG, so that
            # at the default level each lifecycle step is one line (the event's).
            log.debug("echo listening on %s", said)

            self._loops = [Scheduler(f"loop-{i}", buffer_size=config.buffer_size) for i in range(config.loops)]
            self._acceptor_loop = Scheduler("acceptor", buffer_size=0, on_critical_exit=self._failures.fail)
            self._pool = ThreadPoolExecutor(max_workers=config.loops + 1, thread_name_prefix="echo")
            for loop in self._loops:
                loop.spawn_threadsafe(every(FOLD_INTERVAL_S, functools.partial(self._fold, loop)), daemon=True)
            acceptor = Acceptor(
                listener,
                self._loops,
                self._start_connection,
                stats=self.stats,
                publish=self.publish,
                max_connections=config.max_connections,
                max_connections_per_ip=config.max_connections_per_ip,
                on_ready=self._on_ready,
                proxy=ProxyPolicy.from_settings(
                    config.proxy_protocol, config.proxy_protocol_timeout, config.proxy_protocol_from
                ),
                sole_owner=self._given_listener is None,  # a worker's is shared with the next generation
            )
            self._proxy_admission = acceptor.proxy_admission
            if tls_listener is not None and tls is not None:
                self._spawn_tls_acceptor(tls_listener, tls, acceptor)
            if udp_sock is not None:
                udp = UdpEcho(udp_sock, self.stats, rate=config.udp_rate, global_rate=config.udp_global_rate)
                self._acceptor_loop.spawn_threadsafe(udp.run(), udp_sock, critical=True)
                self._acceptor_loop.spawn_threadsafe(every(FOLD_INTERVAL_S, udp.fold), daemon=True)
            self._acceptor_loop.spawn_threadsafe(acceptor.run(), listener, daemon=True, critical=True)
            if config.stats_interval > 0:
                self._acceptor_loop.spawn_threadsafe(every(config.stats_interval, self._publish_stats), daemon=True)
            self._futures = [self._pool.submit(loop.run) for loop in (self._acceptor_loop, *self._loops)]
            for loop, future in zip((self._acceptor_loop, *self._loops), self._futures, strict=True):
                future.add_done_callback(functools.partial(self._loop_done, loop.name))

    def _open_optional_listeners(
        self, config: Config, listener: socket.socket
    ) -> tuple[socket.socket | None, socket.socket | None]:
        """The TLS listener and the UDP socket, if configured; on failure nothing stays open."""
        opened: list[socket.socket] = [listener]
        try:
            tls_listener = udp_sock = None
            if config.tls_port is not None:
                try:
                    tls_listener = self._given_tls_listener or open_listener(
                        config.host, config.tls_port, config.backlog
                    )
                except ListenError as error:
                    raise ListenError(error.errno, error.strerror, "the TLS port") from None
                opened.append(tls_listener)
                self.tls_address = tls_listener.getsockname()
            if config.udp_port is not None:
                udp_sock = self._given_udp_socket or open_udp(config.host, config.udp_port)
                self.udp_address = udp_sock.getsockname()
            return tls_listener, udp_sock
        except OSError:
            for sock in opened:
                sock.close()
            raise

    def _spawn_tls_acceptor(self, tls_listener: socket.socket, tls: TlsContext, acceptor: Acceptor) -> None:
        """A second Acceptor on the same scheduler, same limits, handing off to TLS tasks."""
        assert self._acceptor_loop is not None
        config = self.config
        start = functools.partial(
            self._start_tls_connection,
            tls=tls,
            waits=TlsWaits.for_tls(config.idle_timeout, config.write_stall_timeout, config.tls_handshake_timeout),
            on_close=self._on_close,
            failures=HandshakeFailures(),
        )
        tls_acceptor = Acceptor(
            tls_listener,
            self._loops,
            start,
            stats=self.stats,
            publish=self.publish,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            on_ready=lambda: None,
            sole_owner=self._given_tls_listener is None,
            name="tls",
        )
        tls_acceptor._ids = acceptor._ids  # one numbering of connections for both listeners
        self._acceptor_loop.spawn_threadsafe(tls_acceptor.run(), tls_listener, daemon=True, critical=True)

    def _start_tls_connection(self, loop: Scheduler, *args: Any, **kwargs: Any) -> None:  # loop's thread
        self.stats.listener_accepted("tls")
        start_tls_connection(loop, *args, **kwargs)

    def reload_tls(self) -> bool:
        """SIGHUP (main thread): re-read the TLS certificate and key for new connections.
        False if TLS is off or the files were unusable (then the old ones stay)."""
        return self.tls is not None and self.tls.reload()

    def serve_forever(self) -> None:
        """Start if needed, then block until the server has stopped (see shutdown)."""
        self.start()
        self.stopped.wait()

    def shutdown(self) -> None:
        """Stop accepting, drain, stop. Idempotent; returns once stopped."""
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
            self._acceptor_loop.request_stop(now, now)
            wait_futures(self._futures[:1], timeout=STOP_MARGIN_S)
            grace = now + config.shutdown_timeout
            abort = grace + FINAL_FLUSH_S
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

    def _start_connection(self, loop: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        conn = Connection(conn_id, peer, ip, time.monotonic())
        greet = None if self._banner is None else functools.partial(self._greeting, sock)
        if self._proxy_admission is not None:
            task = proxied_echo(sock, conn, loop.buffer, self._waits, self._on_close, self._proxy_admission, greet)
        else:
            task = echo(sock, conn, loop.buffer, self._waits, self._on_close, greet(conn) if greet else b"")
        loop.spawn(task, sock, state=conn)

    def _greeting(self, sock: socket.socket, conn: Connection) -> bytes:  # the connection's scheduler thread
        assert self._banner is not None
        return self._banner.render(conn.id, conn.peer, functools.partial(local_address, sock))

    def _on_close(self, conn: Connection) -> None:  # the connection's scheduler thread
        duration = time.monotonic() - conn.opened_at
        listener: str = getattr(conn, "listener", "tcp")
        extra: dict[str, str] = {}
        if listener != "tcp":
            extra["listener"] = listener
            if getattr(conn, "detail", ""):
                extra["detail"] = conn.detail  # type: ignore[attr-defined]
        self.stats.connection_closed(
            conn.ip,
            conn.reason,
            conn.bytes_in - conn.folded_in,
            conn.bytes_out - conn.folded_out,
            conn.bytes_in + conn.bytes_out,
            duration,
            listener,
        )
        self.publish(
            event(
                "closed",
                level="warning" if conn.reason == "error" else "info",
                conn_id=conn.id,
                peer=conn.peer,
                **({"via": conn.via} if conn.via else {}),
                reason=conn.reason,
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
                duration_s=round(duration, 6),
                **extra,
            )
        )

    def _fold(self, loop: Scheduler) -> None:
        traffic: dict[str, list[int]] = {}  # listener -> [received, sent]
        for task in loop.tasks():
            conn = task.state
            if isinstance(conn, Connection):
                counts = traffic.setdefault(getattr(conn, "listener", "tcp"), [0, 0])
                counts[0] += conn.bytes_in - conn.folded_in
                counts[1] += conn.bytes_out - conn.folded_out
                conn.folded_in = conn.bytes_in
                conn.folded_out = conn.bytes_out
        for listener, (received, sent) in traffic.items():
            if received or sent:
                self.stats.add_traffic(received, sent, listener)
