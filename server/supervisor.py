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
summed up by the supervisor's own: ``worker_ready`` (with ``restart_s`` for a
replacement), ``worker_exited`` (exit status, connections lost, its counts),
``reloading``/``reloaded``/``reload_failed``, and one ``ready``, ``stopping`` and
``stopped`` for the whole server (``stopped`` carries the totals).

Restarts: a worker that exits unasked is replaced at once (its slot, its generation's
config). CRASH_LOOP_DEATHS deaths within CRASH_LOOP_WINDOW_S are a crash loop: the
supervisor fails (as a dead EchoServer thread does: ``failed`` event, failure
callbacks; the CLI then drains the rest and exits 1) instead of looping.

Threads: the *monitor* thread owns the worker table, the pipes, the selector and the
timers; everything it learns that others read (snapshots, rows, pids) is behind
``_counts_lock``. ``start``, ``reload``, ``shutdown`` and ``kill_workers`` are for the
thread that owns the lifecycle (the CLI's main and stopper threads); they talk to the
monitor through ``_commands`` plus a wake-up socketpair. The ServerView methods
(``snapshot``, ``is_ready``, ``draining``) may be called from any thread.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import selectors
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from server.admin import AdminServer
from server.config import Config
from server.core import FINAL_FLUSH_S
from server.events import Event, event
from server.exchange import Exchange, get_exchange
from server.listener import format_address, open_listener
from server.shared_limits import SharedLimits
from server.stats import Stats, StatsSnapshot
from server.totals import WorkerRow, WorkersSnapshot, total, unpack
from server.worker_process import WorkerProcess, exit_status

log = logging.getLogger("echo.supervisor")

CRASH_LOOP_DEATHS = 5  # this many unasked exits ...
CRASH_LOOP_WINDOW_S = 10.0  # ... within this long: give up (exit 1)
RELOAD_READY_S = 30.0  # a new generation not ready by then is abandoned; the old one stays
KILL_MARGIN_S = 0.3  # past shutdown_timeout + FINAL_FLUSH_S: then SIGKILL what is left
REAP_S = 1.0  # after SIGKILL, how long to wait for the exits
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
# Worker events that the supervisor's own events replace.
_SUMMED_UP = frozenset({"started", "listening", "ready", "stopping", "stopped", "stats"})


class Supervisor:
    def __init__(self, config: Config, *, stats: Stats | None = None, exchange: Exchange | None = None) -> None:
        self.config = config
        self.stats = stats or Stats()  # the supervisor's own: the log's drops, its uptime
        self.exchange = exchange or get_exchange("events")
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.server_address: tuple[Any, ...] = ("", 0)
        self.admin: AdminServer | None = None
        self.failure: BaseException | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # lifecycle
        self._started = False
        self._draining = False
        self._failure_lock = threading.Lock()
        self._failure_callbacks: list[Callable[[BaseException], None]] = []
        self._commands: queue.SimpleQueue[tuple[str, Config | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._monitor = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._listener: socket.socket | None = None
        self._limits: SharedLimits | None = None
        # Behind _counts_lock (the monitor writes; admin threads and the main thread read).
        self._counts_lock = threading.Lock()
        self._retired = StatsSnapshot()
        self._live: dict[int, StatsSnapshot] = {}  # pid -> latest snapshot
        self._rows: dict[int, WorkerRow] = {}  # pid -> row
        self._restarts: Counter[int] = Counter()  # worker slot -> replacements
        self._peak = 0
        # The monitor thread's own.
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, WorkerProcess] = {}  # pid -> worker
        self._generation = 0
        self._configs: dict[int, Config] = {}  # generation -> its config
        self._pending: int | None = None  # a reload's generation, until it is ready
        self._pending_deadline = 0.0
        self._deaths: deque[float] = deque()
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._next_stats = 0.0

    # --- ServerView (any thread) ------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self._draining

    @property
    def healthy(self) -> bool:
        return self.failure is None

    def snapshot(self) -> WorkersSnapshot:
        """Totals across every worker, past and present, plus one row per live worker."""
        with self._counts_lock:
            totals = total([self._retired, *self._live.values()])
            rows = tuple(sorted(self._rows.values(), key=lambda r: (r.worker, r.generation)))
            restarts = sum(self._restarts.values())
            peak = max(self._peak, totals.active)
        own = self.stats.snapshot()
        totals = dataclasses.replace(
            totals,
            peak_active=peak,
            uptime_s=own.uptime_s,
            log_events_dropped=totals.log_events_dropped + own.log_events_dropped,
        )
        return WorkersSnapshot.of(totals, rows, restarts)

    def publish(self, record: Event) -> None:
        self.exchange.send(record)

    def add_failure_callback(self, callback: Callable[[BaseException], None]) -> None:
        """``callback(error)`` runs once, on the monitor thread, if the supervisor fails."""
        with self._failure_lock:
            failure = self.failure
            if failure is None:
                self._failure_callbacks.append(callback)
        if failure is not None:
            callback(failure)

    # --- lifecycle (the CLI's threads) ------------------------------------------------

    def start(self) -> None:
        """Listen, open the admin endpoint, start the monitor (which spawns the workers)."""
        with self._lock:
            if self._started:
                return
            config = self.config
            self._listener = open_listener(config.host, config.port, config.backlog)
            self.server_address = self._listener.getsockname()
            # Rows for a generation, the one draining behind it, and spares for replacements.
            self._limits = SharedLimits(rows=3 * max(config.workers, 4), context=self._ctx)
            if config.admin_port is not None:
                try:
                    self.admin = AdminServer(self, config.effective_admin_host, config.admin_port)
                except OSError:
                    self._listener.close()
                    raise
            self._started = True
            self.publish(
                event("started", workers=config.workers, loops=config.loops, max_connections=config.max_connections)
            )
            addresses: dict[str, Any] = {"address": format_address(self.server_address)}
            if self.admin is not None:
                addresses["admin_address"] = format_address(self.admin.address)
                self.admin.start()
            self.publish(event("listening", **addresses))
            self._monitor.start()

    def reload(self, config: Config) -> None:
        """SIGHUP: start a generation of workers on ``config``; once all are ready they
        take over and the old generation drains. Settings in RESTART_ONLY keep their
        running values (a warning names those that changed)."""
        changed = [name for name in RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if changed:
            log.warning("reload: %s cannot change without a restart; keeping the running values", ", ".join(changed))
            config = dataclasses.replace(config, **{name: getattr(self.config, name) for name in changed})
        self._post("reload", config)

    def shutdown(self) -> None:
        """Stop accepting, drain every worker, stop. Idempotent; returns once stopped
        (within shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S + REAP_S, plus the
        admin endpoint's close)."""
        with self._lock:
            if not self._started or self.stopped.is_set():
                self.stopped.set()
                return
            self._draining = True
            self.ready.clear()
            config = self.config
            self.publish(event("stopping", shutdown_timeout_s=config.shutdown_timeout))
            self._post("stop", None)
            self._monitor.join(config.shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S + REAP_S + 1.0)
            final = self.snapshot()
            fields = StatsSnapshot.as_dict(final)
            self.publish(event("stopped", **fields, workers_restarted=final.restarts))
            if self.admin is not None:
                self.admin.close()
            self.stopped.set()

    def close(self) -> None:
        self.shutdown()

    def kill_workers(self) -> None:
        """A second stop signal: SIGKILL every worker now (any thread)."""
        with self._counts_lock:
            pids = list(self._rows)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _post(self, command: str, config: Config | None) -> None:
        self._commands.put((command, config))
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # --- the monitor thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._next_stats = time.monotonic() + self.config.stats_interval
            self._spawn_generation(self.config)
            while self._workers or not self._stopping:
                for key, _ in self._selector.select(self._timeout()):
                    if key.fileobj is self._wake_r:
                        self._take_commands()
                    elif isinstance(key.data, WorkerProcess):
                        self._heard(key.data, key.fileobj)
                self._tick(time.monotonic())
        except Exception as error:
            log.exception("the supervisor's monitor thread failed")
            self._fail("supervisor monitor failed", error)
            self.kill_workers()
        finally:
            self._selector.close()
            if self._listener is not None:
                self._listener.close()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_stats] if self.config.stats_interval > 0 else []
        if self._pending is not None:
            deadlines.append(self._pending_deadline)
        if self._stopping:
            deadlines.append(self._stop_deadline)
        return max(0.0, min(deadlines, default=now + 1.0) - now)

    def _take_commands(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                command, config = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "stop" and not self._stopping:
                self._begin_stop()
            elif command == "reload" and config is not None:
                self._begin_reload(config)

    def _tick(self, now: float) -> None:
        if self.config.stats_interval > 0 and now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval
            self.publish(event("stats", **StatsSnapshot.as_dict(self.snapshot())))
        if self._pending is not None and now >= self._pending_deadline:
            self._abandon_reload(f"not ready within {RELOAD_READY_S:.0f} s")
        if self._stopping and now >= self._stop_deadline:
            if not self._killed:
                self._killed = True
                self._stop_deadline = now + REAP_S
                if self._workers:
                    log.error("%d worker(s) still running after the drain: killing them", len(self._workers))
                    self.kill_workers()
            else:
                self._workers.clear()  # not reaped in time: leave them (they are SIGKILLed)

    def _spawn_generation(self, config: Config) -> int:
        self._generation += 1 if self._pending is None else 0
        generation = self._generation if self._pending is None else self._pending
        self._configs[generation] = config
        for index in range(config.workers):
            self._spawn(index, generation)
        return generation

    def _spawn(self, index: int, generation: int, *, replacing_at: float | None = None) -> None:
        assert self._limits is not None and self._listener is not None
        row = self._limits.take_row()
        if row is None:
            log.error("no free row in the shared limits for worker %d; not started", index)
            return
        worker = WorkerProcess.spawn(
            self._ctx, index, generation, self._configs[generation], self._listener, self._limits, row
        )
        worker.replacing_at = replacing_at
        self._workers[worker.pid] = worker
        self._selector.register(worker.uplink, selectors.EVENT_READ, worker)
        self._selector.register(worker.sentinel, selectors.EVENT_READ, worker)
        with self._counts_lock:
            self._rows[worker.pid] = WorkerRow(index, worker.pid, generation, 0, 0, self._restarts[index])

    def _heard(self, worker: WorkerProcess, fileobj: Any) -> None:
        if worker.pid not in self._workers:
            return  # reaped earlier in this same turn
        if fileobj is worker.uplink:
            if self._read(worker) is None:
                self._selector.unregister(worker.uplink)
            return
        while self._read(worker):  # the process has exited: take what it sent last
            pass
        self._reap(worker)

    def _read(self, worker: WorkerProcess) -> int | None:
        """Take one batch from the worker's pipe: how many messages (0: none waiting),
        None at the pipe's end."""
        batch = worker.receive()
        if batch is None:
            return None
        for message in batch:
            self._take(worker, message)
        return len(batch)

    def _take(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "e":
            _, name, level, conn_id, peer, data, at = message
            if name == "ready":
                self._worker_ready(worker)
            elif name not in _SUMMED_UP:
                fields = MappingProxyType({**data, "worker": worker.index})
                self.publish(Event(name, level, conn_id, peer, fields, at))
        elif kind == "l":
            _, name, levelno, text, created = message
            record = logging.makeLogRecord(
                {"name": name, "levelno": levelno, "levelname": logging.getLevelName(levelno), "created": created}
            )
            record.msg = f"worker {worker.index}: {text}"
            logging.getLogger(name).handle(record)
        elif kind in ("s", "f"):
            snapshot = unpack(message[1])
            with self._counts_lock:
                self._live[worker.pid] = snapshot
                self._rows[worker.pid] = dataclasses.replace(
                    self._rows[worker.pid], active=snapshot.active, accepted=snapshot.accepted
                )
                self._peak = max(self._peak, sum(s.active for s in self._live.values()))

    def _worker_ready(self, worker: WorkerProcess) -> None:
        worker.ready = True
        extra: dict[str, Any] = {}
        if worker.replacing_at is not None:
            extra["restart_s"] = round(time.monotonic() - worker.replacing_at, 3)
        with self._counts_lock:
            extra["restarts"] = self._restarts[worker.index]
        self.publish(event("worker_ready", worker=worker.index, pid=worker.pid, generation=worker.generation, **extra))
        if self._stopping or worker.draining:
            return
        generation = [w for w in self._workers.values() if w.generation == worker.generation]
        if not all(w.ready for w in generation):
            return
        if worker.generation == self._pending:
            self._finish_reload()
        elif worker.generation == self._generation and not self.ready.is_set():
            self.ready.set()
            self.publish(event("ready", address=format_address(self.server_address), workers=len(generation)))

    def _reap(self, worker: WorkerProcess) -> None:
        assert self._limits is not None
        self._selector.unregister(worker.sentinel)
        try:
            self._selector.unregister(worker.uplink)
        except KeyError:
            pass
        code = worker.join()
        self._workers.pop(worker.pid, None)
        lost = self._limits.reclaim(worker.row)
        with self._counts_lock:
            last = self._live.pop(worker.pid, StatsSnapshot())
            self._rows.pop(worker.pid, None)
            self._retired = total([self._retired, dataclasses.replace(last, active=0, peak_active=0)])
        asked = worker.draining or self._stopping
        self.publish(
            event(
                "worker_exited",
                level="info" if asked and code == 0 else "warning",
                worker=worker.index,
                pid=worker.pid,
                generation=worker.generation,
                status=exit_status(code),
                connections_lost=lost,
                accepted=last.accepted,
                closed=last.closed,
                rejected=last.rejected_total,
                bytes_sent=last.bytes_sent,
            )
        )
        if asked:
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - CRASH_LOOP_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= CRASH_LOOP_DEATHS:
            what = f"crash loop: {len(self._deaths)} worker exits within {CRASH_LOOP_WINDOW_S:.0f} s"
            self._fail(what, None)
            return
        if worker.generation == self._pending:
            self._abandon_reload(f"worker {worker.index} exited ({exit_status(code)}) before it was ready")
            return
        with self._counts_lock:
            self._restarts[worker.index] += 1
        self._spawn(worker.index, worker.generation, replacing_at=now)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._pending = None
        config = self.config
        self._stop_deadline = time.monotonic() + config.shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S
        for worker in self._workers.values():
            worker.drain()
        if self._listener is not None:
            self._listener.close()  # the workers' copies keep it open until they stop accepting

    def _begin_reload(self, config: Config) -> None:
        assert self._limits is not None
        if self._stopping:
            return
        if self._pending is not None:
            log.warning("reload: generation %d is still starting; this one is ignored", self._pending)
            return
        if self._limits.free_rows() < config.workers:
            log.warning("reload: the previous generation is still draining; try again once it has exited")
            return
        self._pending = self._generation + 1
        self._pending_deadline = time.monotonic() + RELOAD_READY_S
        self.publish(event("reloading", generation=self._pending, workers=config.workers))
        self._spawn_generation(config)

    def _finish_reload(self) -> None:
        assert self._pending is not None
        old = self._generation
        self._generation, self._pending = self._pending, None
        self.config = self._configs[self._generation]
        for worker in self._workers.values():
            if worker.generation != self._generation:
                worker.drain()
        self.publish(event("reloaded", generation=self._generation, previous=old, workers=self.config.workers))

    def _abandon_reload(self, why: str) -> None:
        generation, self._pending = self._pending, None
        for worker in self._workers.values():
            if worker.generation == generation:
                worker.drain()
        log.error("reload failed: generation %s %s; generation %d keeps serving", generation, why, self._generation)
        self.publish(event("reload_failed", level="error", generation=generation, reason=why))

    def _fail(self, what: str, error: BaseException | None) -> None:
        failure = error or RuntimeError(what)
        with self._failure_lock:
            if self.failure is not None:
                return
            self.failure = failure
            callbacks = list(self._failure_callbacks)
        log.error("fatal: %s", what)
        self.publish(event("failed", level="error", reason=what))
        self.ready.clear()
        for callback in callbacks:
            try:
                callback(failure)
            except Exception:
                log.exception("failure callback %r failed", callback)
