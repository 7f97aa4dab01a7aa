"""Supervisor: N worker processes on one listening socket, one admin endpoint, one log.

    supervisor = Supervisor(config, stats=stats, exchange=exchange)   # config.workers > 1
    supervisor.start()          # listen, admin, spawn the workers (ListenError as EchoServer)
    supervisor.reload(config)   # SIGHUP: a new generation takes over, the old one drains
    supervisor.shutdown()       # SIGTERM: every worker drains; returns once all are gone

It does no echo work. It owns:

- the listening socket, opened once here and inherited by every worker (worker.py).
  One socket and one accept queue, shared, rather than an SO_REUSEPORT group: the
  kernel spreads a group's connections over per-socket queues by hash, and a socket
  that closes (a worker dying or draining for a reload) takes the connections already
  queued on it down with it (reset). With one shared queue a connection the kernel
  accepted waits for whichever worker accepts next, through a crash or a reload.
- the workers, spawned with multiprocessing's spawn context (fork + exec at once: no
  thread of this process is ever forked), each with a pipe up (events, log records,
  stats snapshots) and a pipe down (``drain``; its end means the supervisor is gone);
- the admin endpoint (it is the AdminServer's ServerView: totals of every worker plus
  per-worker rows), the Exchange the LogActor writes (one log stream: only the
  LogActor writes lines), and the shared admission limits (shared_limits.py).

Workers' events are republished with a ``worker`` field; their lifecycle events are
summed up by the supervisor's own: ``worker_ready``, ``worker_exited``,
``reloading``/``reloaded``/``reload_failed`` (monitor.py), and one ``started``,
``listening``, ``ready``, ``stopping`` and ``stopped`` for the whole server
(``stopped`` carries the totals). Restarts and the crash loop: see monitor.py.

Threads: the *monitor* thread (monitor.py) owns the worker processes; what it learns
that others read (snapshots, rows, pids) is in ``counts`` (worker_counts.py).
``start``, ``reload``, ``shutdown`` and ``kill_workers`` are for the threads that own
the lifecycle (the CLI's main and stopper threads); they reach the monitor through
``Monitor.post``. The ServerView methods (``snapshot``, ``is_ready``, ``draining``, ``stalled``),
``fail`` and ``kill_workers`` may be called from any thread. ``failure``, ``healthy`` and
``add_failure_callback`` come from failure.py; the callbacks run on the thread that
failed (the monitor's).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from server.config import Config
from server.core import FINAL_FLUSH_S, STOP_BUDGET_S, admin_close_budget
from server.engine.listener import refuse_new_connections
from server.engine.os_names import name_process
from server.engine.tls import TlsError
from server.failure import FailureAttributes, FailureRecord
from server.lib.net import format_address
from server.listeners import Listener, ListenerAddresses, listener_specs, load_tls, open_listeners
from server.observe.admin import AdminServer
from server.observe.events import Event, event
from server.observe.exchange import Exchange, get_exchange
from server.observe.faults_api import load_token
from server.observe.logger import LogActor
from server.observe.stats import Stats, StatsSnapshot
from server.observe.totals import WorkersSnapshot
from server.workers.monitor import KILL_MARGIN_S, REAP_S, Monitor
from server.workers.shared_limits import SharedLimits
from server.workers.worker_connections import WorkerConnections
from server.workers.worker_counts import WorkerCounts

if TYPE_CHECKING:
    from server.workers.faults_relay import RelayedPolicy

log = logging.getLogger("echo.supervisor")

# Settings a reload cannot change: they belong to what the supervisor opened at start.
RESTART_ONLY = (
    "host",
    "port",
    "backlog",
    "admin_host",
    "admin_port",
    "log_format",
    "log_level",
    "log_file",
    "log_max_bytes",
    "log_backups",
    "log_queue",
)


class Supervisor(FailureAttributes, ListenerAddresses):
    def __init__(
        self,
        config: Config,
        *,
        stats: Stats | None = None,
        exchange: Exchange | None = None,
        log_actor: LogActor | None = None,
    ) -> None:
        """``log_actor``: the LogActor subscribed to ``exchange``; given, the workers format
        their events' lines themselves and it writes them in batches (worker.Uplink)."""
        self.config = config
        self._log = log_actor
        self.stats = stats or Stats()  # the supervisor's own: the log's drops, its uptime
        self.exchange = exchange or get_exchange("events")
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.server_address: tuple[Any, ...] = ("", 0)
        self.listeners: tuple[Listener, ...] = ()  # opened by start(), inherited by every worker
        self.admin: AdminServer | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # lifecycle
        self._started = False
        self._draining = False
        self._failures = FailureRecord(log, self.publish, self.ready.clear)
        self.counts = WorkerCounts()  # the monitor writes; anyone reads
        # Faults on demand: the one policy, pushed to every worker (faults_relay.py).
        self.faults: RelayedPolicy | None = None
        if config.faults == "on":
            from server.workers.faults_relay import RelayedPolicy

            self.faults = RelayedPolicy(
                config.faults_rules or (), seed=config.faults_seed, on_change=self._faults_changed
            )
        self.admin_token = load_token(config.admin_token_file) if config.admin_token_file else None
        self._monitor: Monitor | None = None
        self.connections: WorkerConnections | None = None
        self._monitor_thread: threading.Thread | None = None

    # --- ServerView (any thread) ------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self._draining

    def stalled(self) -> str | None:
        """A stalled loop of a worker, a silent worker, or this process's stalled monitor
        thread, past heartbeat_timeout, named: /healthz answers 503 with it."""
        return self.counts.stalled(self.config.heartbeat_timeout)

    def snapshot(self) -> WorkersSnapshot:
        """Totals across every worker, past and present, plus one row per live worker."""
        return self.counts.snapshot(self.stats.snapshot())

    def publish(self, record: Event) -> None:
        self.exchange.send(record)

    # --- the monitor thread: the workers' lines and events ----------------------------

    def log_lines(self) -> bool:
        """Whether workers format their own events' log lines (a LogActor was given)."""
        return self._log is not None

    def write_lines(self, text: str, count: int) -> None:
        if self._log is not None:
            self._log.send_lines(text, count)

    def publish_unlogged(self, record: Event) -> None:
        """A worker's event whose line it already wrote: to every subscriber but the log."""
        self.exchange.send_except(record, self._log)

    def watched(self) -> bool:
        """Someone besides the log reads the events (/events, a test): workers send them."""
        return self.exchange.subscriber_count > (1 if self._log is not None else 0)

    def _faults_changed(self) -> None:  # the admin handler that changed the policy
        if self._monitor is not None:
            self._monitor.post("faults")

    # --- lifecycle (the CLI's threads) ------------------------------------------------

    def start(self) -> None:
        """Listen, open the admin endpoint, start the monitor (which spawns the workers)."""
        with self._lock:
            if self._started:
                return
            name_process("echo-supervisor")  # ps -e, top; its workers are "echo-worker N"
            config = self.config
            listeners = open_listeners(listener_specs(config), config.backlog)
            self.listeners = listeners
            self.server_address = listeners[0].address
            # Rows for a generation, the one draining behind it, and spares for replacements.
            limits = SharedLimits(rows=3 * max(config.workers, 4), context=self._ctx)
            self.counts.count_peak_with(limits.peak)
            if config.admin_port is not None:
                try:
                    self.admin = AdminServer(self, config.effective_admin_host, config.admin_port)
                except OSError:
                    for listener in listeners:
                        listener.sock.close()
                    raise
            self._monitor = Monitor(self, self._ctx, listeners, limits)
            names = tuple(listener.name for listener in listeners if listener.spec.streams)
            self.connections = WorkerConnections(self._monitor.ask, names)  # GET /connections
            self._monitor_thread = threading.Thread(target=self._monitor.run, name="supervisor", daemon=True)
            self.exchange.on_change = functools.partial(self._monitor.post, "watch")
            self._started = True
            self.publish(
                event("started", workers=config.workers, loops=config.loops, max_connections=config.max_connections)
            )
            addresses: dict[str, Any] = {"address": format_address(self.server_address)}
            if self.admin is not None:
                addresses["admin_address"] = format_address(self.admin.address)
                self.admin.start()
            for listener in listeners[1:]:
                addresses[f"{listener.name}_address"] = format_address(listener.address)
            self.publish(event("listening", **addresses))
            self._monitor_thread.start()

    def reload(self, config: Config) -> None:
        """SIGHUP: start a generation of workers on ``config``; once all are ready they
        take over and the old generation drains. Settings in RESTART_ONLY keep their
        running values (a warning names those that changed)."""
        changed = [name for name in RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if changed:
            log.warning("reload: %s cannot change without a restart; keeping the running values", ", ".join(changed))
            config = dataclasses.replace(config, **{name: getattr(self.config, name) for name in changed})
        if config.tls_port is not None:
            try:
                load_tls(config, listener_specs(config))  # a file's problem is said here; the workers keep running
            except TlsError as error:
                log.error(
                    "reload: --%s: %s; keeping the running configuration",
                    error.setting.replace("_", "-"),
                    error.problem,
                )
                return
        if self._monitor is not None:
            self._monitor.post("reload", config)

    def shutdown(self) -> None:
        """Stop accepting, drain every worker, stop. Idempotent; returns once stopped:
        the workers within shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S (+ REAP_S
        for one that had to be killed), then the admin endpoint's close in what is left of
        shutdown_timeout + STOP_BUDGET_S + KILL_MARGIN_S (core.admin_close_budget)."""
        with self._lock:
            if not self._started or self.stopped.is_set():
                self.stopped.set()
                return
            self._draining = True
            self.ready.clear()
            config = self.config
            self.publish(event("stopping", shutdown_timeout_s=config.shutdown_timeout))
            deadline = time.monotonic() + config.shutdown_timeout + STOP_BUDGET_S + KILL_MARGIN_S
            # No generation follows: let the kernel complete no more handshakes, so the
            # workers' last accepts empty the backlog and nothing queued is reset at the close.
            for listener in self.listeners:
                if listener.spec.streams:
                    refuse_new_connections(listener.sock)
            assert self._monitor is not None and self._monitor_thread is not None
            self._monitor.post("stop")
            self._monitor_thread.join(config.shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S + REAP_S + 1.0)
            self.exchange.on_change = None
            final = self.snapshot()
            fields = StatsSnapshot.as_dict(final)
            self.publish(event("stopped", **fields, workers_restarted=final.restarts))
            if self.admin is not None:
                self.admin.close(admin_close_budget(deadline))
            self.stopped.set()

    def close(self) -> None:
        self.shutdown()

    def kill_workers(self) -> None:
        """A second stop signal: SIGKILL every worker now (any thread)."""
        for pid in self.counts.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def fail(self, what: str, error: BaseException | None) -> None:
        """A fatal failure (any thread): logged and published as ``failed``; the first
        also clears ready and goes to the failure callbacks (the CLI then stops with
        exit 1). See failure.py."""
        self._failures.fail(what, error)
