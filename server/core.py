"""EchoServer: the listener, the schedulers on a ThreadPoolExecutor, and their lifecycle.

    with EchoServer(Config(port=0)) as server:      # start() binds, listens, starts
        host, port = server.server_address[:2]
        ...                                          # server.ready is set once accepting

The pool hosts ``loops`` connection schedulers plus one acceptor scheduler; each is a
generator-task loop (see scheduler.py). New connections go from the acceptor to the
connection schedulers round-robin, through each scheduler's queue + wake-up.

Threads: ``start``, ``shutdown``, ``close`` and ``serve_forever`` may be called from
any thread (a lock orders them); ``shutdown`` is idempotent and blocks until stopped,
which is bounded: shutdown_timeout for the drain, then FINAL_FLUSH_S for the last
flush, after which connections left are reset. ``stats``, ``ready``, ``stopped`` and
``draining`` may be read from anywhere.

Stopping: stop accepting (the listener closes) -> connections are echoed until they
close or shutdown_timeout passes -> then they stop reading, flush what is owed, send
FIN and close -> the schedulers return and the pool shuts down -> ``stopped`` event.
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

from server.acceptor import Acceptor
from server.admin import AdminServer
from server.config import Config
from server.echo import Connection, EchoWaits, echo
from server.events import Event, event
from server.exchange import Exchange, get_exchange
from server.listener import fit_fd_limit, format_address, open_listener
from server.scheduler import Scheduler, every
from server.stats import Stats, StatsSnapshot

log = logging.getLogger("echo.server")

FINAL_FLUSH_S = 1.0  # after the drain: time to flush what is owed before resetting
FOLD_INTERVAL_S = 1.0  # how often long connections' bytes reach Stats
STOP_MARGIN_S = 5.0  # past every deadline, how long shutdown() waits for a thread


class EchoServer:
    def __init__(self, config: Config, *, stats: Stats | None = None, exchange: Exchange | None = None) -> None:
        self.config = config
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

    @property
    def draining(self) -> bool:
        """True from the moment shutdown begins."""
        return self._draining

    def is_ready(self) -> bool:
        return self.ready.is_set()

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
            config, clamped = fit_fd_limit(self.config)
            if clamped:
                log.warning("%s", clamped)
            self.config = config
            listener = open_listener(config.host, config.port, config.backlog)
            self.server_address = listener.getsockname()
            if config.admin_port is not None:
                try:
                    self.admin = AdminServer(self, config.effective_admin_host, config.admin_port)
                except OSError:
                    listener.close()
                    raise
            self._started = True
            self.publish(event("started", loops=config.loops, max_connections=config.max_connections))
            addresses: dict[str, Any] = {"address": format_address(self.server_address)}
            if self.admin is not None:
                addresses["admin_address"] = format_address(self.admin.address)
                self.admin.start()
            self.publish(event("listening", **addresses))
            log.info("echo listening on %s", " and admin on ".join(addresses.values()))

            self._loops = [Scheduler(f"loop-{i}", buffer_size=config.buffer_size) for i in range(config.loops)]
            self._acceptor_loop = Scheduler("acceptor", buffer_size=0)
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
            )
            self._acceptor_loop.spawn_threadsafe(acceptor.run(), listener, daemon=True)
            if config.stats_interval > 0:
                self._acceptor_loop.spawn_threadsafe(every(config.stats_interval, self._publish_stats), daemon=True)
            self._futures = [self._pool.submit(loop.run) for loop in (self._acceptor_loop, *self._loops)]

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
            self._draining = True
            self.ready.clear()
            config = self.config
            assert self._acceptor_loop is not None and self._pool is not None
            self.publish(event("stopping", shutdown_timeout_s=config.shutdown_timeout))
            log.info("stopping: no new connections; draining for up to %.1f s", config.shutdown_timeout)

            now = time.monotonic()
            self._acceptor_loop.request_stop(now, now)
            wait_futures(self._futures[:1], timeout=STOP_MARGIN_S)
            grace = now + config.shutdown_timeout
            abort = grace + FINAL_FLUSH_S
            for loop in self._loops:
                loop.request_stop(grace, abort)
            done, stuck = wait_futures(self._futures, timeout=abort - time.monotonic() + STOP_MARGIN_S)
            for future in done:
                if future.exception() is not None:
                    log.error("a scheduler failed", exc_info=future.exception())
            if stuck:
                log.error("%d scheduler thread(s) did not stop in time", len(stuck))
            self._pool.shutdown(wait=not stuck)
            final = self.stats.snapshot()
            log.info(
                "stopped: %d accepted, %d rejected, %d bytes echoed, %d errors",
                final.accepted,
                final.rejected_total,
                final.bytes_sent,
                final.errors,
            )
            self.publish(event("stopped", **final.as_dict()))
            if self.admin is not None:  # last: probes and /events watchers see the drain
                self.admin.close()
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
        self.ready.set()
        self.publish(event("ready", address=format_address(self.server_address)))

    def _publish_stats(self) -> None:  # acceptor thread
        self.publish(event("stats", **self.stats.snapshot().as_dict()))

    def _start_connection(self, loop: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        conn = Connection(conn_id, peer, ip, time.monotonic())
        loop.spawn(echo(sock, conn, loop.buffer, self._waits, self._on_close), sock, state=conn)

    def _on_close(self, conn: Connection) -> None:  # the connection's scheduler thread
        duration = time.monotonic() - conn.opened_at
        self.stats.connection_closed(
            conn.ip,
            conn.reason,
            conn.bytes_in - conn.folded_in,
            conn.bytes_out - conn.folded_out,
            conn.bytes_in + conn.bytes_out,
            duration,
        )
        self.publish(
            event(
                "closed",
                level="warning" if conn.reason == "error" else "info",
                conn_id=conn.id,
                peer=conn.peer,
                reason=conn.reason,
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
                duration_s=round(duration, 6),
            )
        )

    def _fold(self, loop: Scheduler) -> None:
        received = sent = 0
        for task in loop.tasks():
            conn = task.state
            if isinstance(conn, Connection):
                received += conn.bytes_in - conn.folded_in
                sent += conn.bytes_out - conn.folded_out
                conn.folded_in = conn.bytes_in
                conn.folded_out = conn.bytes_out
        if received or sent:
            self.stats.add_traffic(received, sent)
