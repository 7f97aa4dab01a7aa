"""Monitor: the supervisor's thread that owns the worker processes.

It spawns each generation of workers (worker_process.py), listens to every worker's
up pipe and exit sentinel on one selector, and acts on what it hears:

- messages from a worker: events are republished on the supervisor's Exchange with a
  ``worker`` field (but the worker's lifecycle events, which the supervisor's own sum
  up), log records go to the supervisor's ``logging`` (hence its one LogActor),
  snapshots to WorkerCounts;
- a worker's ``ready``: ``worker_ready`` (with ``restart_s`` for a replacement); once a
  whole generation is ready, the server's ``ready`` (the first) or the end of a reload;
- a worker's exit: its place in the shared limits is reclaimed, ``worker_exited`` says
  how it ended, and an exit nobody asked for is replaced at once in the same slot with
  its generation's config, unless it makes CRASH_LOOP_DEATHS within CRASH_LOOP_WINDOW_S
  (then the supervisor fails: the CLI drains the rest and exits 1);
- /connections questions from admin threads (``ask``): sent down each ready worker's
  control pipe, their answers handed back as they come (worker_connections.py);
- a hung worker: one whose loop has not turned, or that has sent nothing, for
  ``--worker-timeout`` (its snapshots carry its heartbeat, every
  worker.SNAPSHOT_INTERVAL_S), or that is still draining that long after its drain's
  bound: ``worker_hung`` names why, it gets SIGABRT (its stacks on stderr) and SIGKILL
  HUNG_GRACE_S later, and its exit is handled like any other (replaced, and counted by
  the crash-loop rule, unless it was draining);
- commands from the supervisor's lifecycle thread (``post``): ``reload`` starts a new
  generation and, once it is all ready, drains the old one (if it is not ready within
  RELOAD_READY_S, or one of it dies first, it is drained instead and the old one stays);
  ``stop`` drains every worker (each takes the connections queued on the shared
  listeners into its drain; a reload's drain leaves them to the generation that stays),
  closes this process's copy of the listener and, past
  shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S, kills what is left.

Threads: ``post`` and ``ask`` from any thread (a queue plus a wake-up socketpair); everything else
on the monitor thread (``run``), which alone touches the worker table and the selector.
"""

from __future__ import annotations

import logging
import queue
import selectors
import signal
import time
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from server.config import Config
from server.core import FINAL_FLUSH_S
from server.lib.net import format_address
from server.lib.waker import Waker
from server.listeners import Listener
from server.observe.events import Event, event
from server.observe.stats import StatsSnapshot
from server.observe.totals import WorkersSnapshot, unpack
from server.workers.shared_limits import SharedLimits
from server.workers.worker import SUMMED_UP
from server.workers.worker_connections import ANSWER, Ask
from server.workers.worker_counts import MONITOR_IDLE_S, WorkerCounts
from server.workers.worker_process import WorkerProcess, exit_status

if TYPE_CHECKING:
    from server.workers.faults_relay import RelayedPolicy

log = logging.getLogger("echo.supervisor")

CRASH_LOOP_DEATHS = 5  # this many unasked exits ...
CRASH_LOOP_WINDOW_S = 10.0  # ... within this long: give up (exit 1)
RELOAD_READY_S = 30.0  # a new generation not ready by then is abandoned; the old one stays
KILL_MARGIN_S = 0.3  # past shutdown_timeout + FINAL_FLUSH_S: then SIGKILL what is left
REAP_S = 1.0  # after SIGKILL, how long to wait for the exits
HUNG_GRACE_S = 1.0  # after a hung worker's SIGABRT, its SIGKILL
LIVENESS_CHECK_S = 0.25  # how often the monitor looks for hung workers


class Owner(Protocol):
    """What the monitor needs of its supervisor."""

    config: Config
    counts: WorkerCounts
    server_address: tuple[Any, ...]
    faults: RelayedPolicy | None

    @property
    def ready(self) -> Any: ...

    def publish(self, record: Event) -> None: ...

    def publish_unlogged(self, record: Event) -> None: ...

    def write_lines(self, text: str, count: int) -> None: ...

    def log_lines(self) -> bool: ...

    def watched(self) -> bool: ...

    def snapshot(self) -> WorkersSnapshot: ...

    def fail(self, what: str, error: BaseException | None) -> None: ...

    def kill_workers(self) -> None: ...


class Monitor:
    def __init__(self, owner: Owner, ctx: Any, listeners: tuple[Listener, ...], limits: SharedLimits) -> None:
        self._owner = owner
        self.config = owner.config
        self._ctx = ctx
        self._listeners: tuple[Listener, ...] | None = listeners
        self._limits = limits
        self._commands: queue.SimpleQueue[tuple[str, Config | Ask | None]] = queue.SimpleQueue()
        self._asks: dict[int, Ask] = {}  # /connections questions waiting for workers' answers
        self._waker = Waker()
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
        self._watched = False  # the workers were told that /events has readers

    def post(self, command: str, config: Config | None = None) -> None:
        """``stop``, ``reload`` with its config, or ``watch`` (the event readers changed)
        (any thread)."""
        self._commands.put((command, config))
        self._waker.wake()

    def ask(self, request: Ask) -> None:
        """A /connections question for every live worker (any thread; worker_connections.py)."""
        self._commands.put(("ask", request))
        self._waker.wake()

    def run(self) -> None:  # the monitor thread's target
        try:
            self._selector.register(self._waker.reader, selectors.EVENT_READ)
            self._next_stats = time.monotonic() + self.config.stats_interval
            self._spawn_generation(self.config)
            while self._workers or not self._stopping:
                for key, _ in self._selector.select(self._timeout()):
                    if key.fileobj is self._waker.reader:
                        self._take_commands()
                    elif isinstance(key.data, WorkerProcess):
                        self._heard(key.data, key.fileobj)
                now = time.monotonic()
                self._owner.counts.turned(now)
                self._tick(now)
        except Exception as error:
            self._owner.fail("supervisor monitor failed", error)  # logs it, with the traceback
            self._owner.kill_workers()
        finally:
            self._selector.close()
            self._waker.close()
            self._close_listeners()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_stats] if self.config.stats_interval > 0 else []
        if self._pending is not None:
            deadlines.append(self._pending_deadline)
        if self._stopping:
            deadlines.append(self._stop_deadline)
        if self.config.worker_timeout > 0 or any(w.hung_at is not None for w in self._workers.values()):
            deadlines.append(now + LIVENESS_CHECK_S)
        return max(0.0, min(deadlines, default=now + MONITOR_IDLE_S) - now)

    def _take_commands(self) -> None:
        self._waker.drain()
        while True:
            try:
                command, config = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(config, Ask):
                self._ask_workers(config)
            elif command == "stop" and not self._stopping:
                self._begin_stop()
            elif command == "reload" and config is not None:
                self._begin_reload(config)
            elif command == "watch":
                self._update_watch()
            elif command == "faults" and self._owner.faults is not None:
                policy = self._owner.faults.export()
                for worker in self._workers.values():
                    worker.send_faults(policy)

    def _ask_workers(self, request: Ask) -> None:
        """Send the question to each ready worker that is not draining; the rest are
        not asked, and the asker hears of them by the answers missing."""
        self._asks = {key: old for key, old in self._asks.items() if not old.done.is_set()}
        for worker in self._workers.values():
            if worker.ready and worker.ask(request.message):
                request.expect(worker.index)
        self._asks[request.id] = request
        request.sent_all()

    def _tick(self, now: float) -> None:
        if self.config.stats_interval > 0 and now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval
            self._owner.publish(event("stats", **StatsSnapshot.as_dict(self._owner.snapshot())))
        if self._pending is not None and now >= self._pending_deadline:
            self._abandon_reload(f"not ready within {RELOAD_READY_S:.0f} s")
        if self._stopping and now >= self._stop_deadline:
            if not self._killed:
                self._killed = True
                self._stop_deadline = now + REAP_S
                if self._workers:
                    log.error("%d worker(s) still running after the drain: killing them", len(self._workers))
                    self._owner.kill_workers()
            else:
                self._workers.clear()  # not reaped in time: leave them (they are SIGKILLed)
        self._check_liveness(now)
        self._update_watch()

    def _update_watch(self) -> None:
        """Tell the workers if someone besides the log now reads events (or stopped)."""
        watched = self._owner.watched()
        if watched != self._watched:
            self._watched = watched
            for worker in self._workers.values():
                worker.watch(watched)

    def _check_liveness(self, now: float) -> None:
        drain_bound = self.config.shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S
        for worker in list(self._workers.values()):
            if worker.hung_at is not None:
                if now >= worker.hung_at + HUNG_GRACE_S:
                    worker.signal(signal.SIGKILL)  # again each check until reaped: harmless
                continue
            why = worker.hung(now, self.config.worker_timeout, None if self._stopping else drain_bound)
            if why is not None:
                self._hung(worker, now, why)

    def _hung(self, worker: WorkerProcess, now: float, why: str) -> None:
        worker.hung_at = now
        self._owner.publish(
            event(
                "worker_hung",
                level="error",
                worker=worker.index,
                pid=worker.pid,
                generation=worker.generation,
                reason=why,
                worker_timeout_s=self.config.worker_timeout,
            )
        )
        worker.signal(signal.SIGABRT)

    def _drain(self, worker: WorkerProcess, *, hand_over: bool = False) -> None:
        worker.drain(hand_over=hand_over)
        self._owner.counts.draining(worker.pid)

    def _spawn_generation(self, config: Config) -> int:
        self._generation += 1 if self._pending is None else 0
        generation = self._generation if self._pending is None else self._pending
        self._configs[generation] = config
        for index in range(config.workers):
            self._spawn(index, generation)
        return generation

    def _spawn(self, index: int, generation: int, *, replacing_at: float | None = None) -> None:
        if self._listeners is None:
            return  # stopping: nothing more is started
        row = self._limits.take_row()
        if row is None:
            log.error("no free row in the shared limits for worker %d; not started", index)
            return
        faults = self._owner.faults
        worker = WorkerProcess.spawn(
            self._ctx,
            index,
            generation,
            self._configs[generation],
            self._listeners,
            self._limits,
            row,
            log_lines=self._owner.log_lines(),
            faults=faults.export() if faults is not None else None,
        )
        if self._watched:
            worker.watch(True)
        worker.replacing_at = replacing_at
        self._workers[worker.pid] = worker
        self._selector.register(worker.uplink, selectors.EVENT_READ, worker)
        self._selector.register(worker.sentinel, selectors.EVENT_READ, worker)
        self._owner.counts.started(index, worker.pid, generation)

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
        if batch:
            worker.heard_at = time.monotonic()
        for message in batch:
            self._take(worker, message)
        return len(batch)

    def _take(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "e":
            _, name, level, conn_id, peer, data, at = message
            if name == "ready":
                self._worker_ready(worker)
            elif name not in SUMMED_UP:
                fields = MappingProxyType({**data, "worker": worker.index})
                self._owner.publish(Event(name, level, conn_id, peer, fields, at))
        elif kind == "L":  # log lines the worker formatted: written as they are
            self._owner.write_lines(message[1], message[2])
        elif kind == "w":  # an event whose line the worker wrote: for /events readers only
            _, name, level, conn_id, peer, data, at = message
            fields = MappingProxyType({**data, "worker": worker.index})
            self._owner.publish_unlogged(Event(name, level, conn_id, peer, fields, at))
        elif kind == "l":
            _, name, levelno, text, created = message
            record = logging.makeLogRecord(
                {"name": name, "levelno": levelno, "levelname": logging.getLevelName(levelno), "created": created}
            )
            record.msg = f"worker {worker.index}: {text}"
            logging.getLogger(name).handle(record)
        elif kind in ("s", "f"):
            self._owner.counts.update(worker.pid, unpack(message[1]))
            if len(message) >= 4:  # a heartbeat: its loop stalled longest, and how long
                worker.stalled_loop, worker.stalled_s = message[2], message[3]
                self._owner.counts.heard(worker.pid, worker.heard_at, worker.stalled_loop, worker.stalled_s)
        elif kind == "q" and self._owner.faults is not None:
            self._owner.faults.note(worker.pid, message[1])
        elif kind == ANSWER:
            request = self._asks.get(message[1])
            if request is not None:
                request.answer(worker.index, message[2])

    def _worker_ready(self, worker: WorkerProcess) -> None:
        worker.ready = True
        extra: dict[str, Any] = {}
        if worker.replacing_at is not None:
            extra["restart_s"] = round(time.monotonic() - worker.replacing_at, 3)
        extra["restarts"] = self._owner.counts.restarts_of(worker.index)
        self._owner.publish(
            event("worker_ready", worker=worker.index, pid=worker.pid, generation=worker.generation, **extra)
        )
        if self._stopping or worker.draining:
            return
        generation = [w for w in self._workers.values() if w.generation == worker.generation]
        if not all(w.ready for w in generation):
            return
        if worker.generation == self._pending:
            self._finish_reload()
        elif worker.generation == self._generation and not self._owner.ready.is_set():
            self._owner.ready.set()
            self._owner.publish(
                event("ready", address=format_address(self._owner.server_address), workers=len(generation))
            )

    def _reap(self, worker: WorkerProcess) -> None:
        self._selector.unregister(worker.sentinel)
        try:
            self._selector.unregister(worker.uplink)
        except KeyError:
            pass
        code = worker.join()
        self._workers.pop(worker.pid, None)
        lost = self._limits.reclaim(worker.row)
        last = self._owner.counts.retire(worker.pid)
        if self._owner.faults is not None:
            self._owner.faults.retire(worker.pid)
        asked = worker.draining or self._stopping
        self._owner.publish(
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
        if worker.generation == self._pending:  # a reload that fails is no crash loop
            self._abandon_reload(f"worker {worker.index} exited ({exit_status(code)}) before it was ready")
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - CRASH_LOOP_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= CRASH_LOOP_DEATHS:
            what = f"crash loop: {len(self._deaths)} worker exits within {CRASH_LOOP_WINDOW_S:.0f} s"
            self._owner.fail(what, None)
            return
        self._owner.counts.restarted(worker.index)
        self._spawn(worker.index, worker.generation, replacing_at=now)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._pending = None
        config = self.config
        self._stop_deadline = time.monotonic() + config.shutdown_timeout + FINAL_FLUSH_S + KILL_MARGIN_S
        for worker in self._workers.values():
            self._drain(worker)
        self._close_listeners()  # the workers' copies keep them open until they stop accepting

    def _close_listeners(self) -> None:
        for listener in self._listeners or ():
            listener.sock.close()
        self._listeners = None

    def _begin_reload(self, config: Config) -> None:
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
        self._owner.publish(event("reloading", generation=self._pending, workers=config.workers))
        self._spawn_generation(config)

    def _finish_reload(self) -> None:
        assert self._pending is not None
        old = self._generation
        self._generation, self._pending = self._pending, None
        self.config = self._owner.config = self._configs[self._generation]
        for worker in self._workers.values():
            if worker.generation != self._generation:
                self._drain(worker, hand_over=True)  # the queued connections are the new ones'

        self._owner.publish(event("reloaded", generation=self._generation, previous=old, workers=self.config.workers))

    def _abandon_reload(self, why: str) -> None:
        generation, self._pending = self._pending, None
        for worker in self._workers.values():
            if worker.generation == generation:
                self._drain(worker, hand_over=True)  # the old generation goes on accepting
        log.error("reload failed: generation %s %s; generation %d keeps serving", generation, why, self._generation)
        self._owner.publish(event("reload_failed", level="error", generation=generation, reason=why))
