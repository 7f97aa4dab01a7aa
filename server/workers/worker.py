"""A worker process: today's EchoServer on the supervisor's listening socket.

The supervisor (supervisor.py) starts each worker with multiprocessing's *spawn*
context: a fresh interpreter (fork + exec at once), so no thread of the supervisor is
ever forked. ``WorkerSpec`` travels pickled; multiprocessing passes the listening
socket, the two pipes and the shared limits down as file descriptors while it starts
the process. The worker then runs ``main(spec)``:

- an EchoServer on the inherited listener (and TLS listener, UDP socket), admin off, its own periodic ``stats`` events
  off (the supervisor publishes the totals), admitting through ``GlobalStats`` so that
  max_connections and max_connections_per_ip hold for the whole server (shared_limits.py);
- an ``Uplink`` actor: subscribed to the worker's events Exchange and its ``echo``
  logger, it sends them in batches up the worker's pipe (its events as log lines it
  formats itself: see Uplink), plus a stats snapshot every SNAPSHOT_INTERVAL_S and a
  final one after the drain. Its mailbox is bounded
  (``log_queue``): if the supervisor falls behind, events are dropped and counted, and
  no server thread ever waits for the pipe;
- the main thread sends, with each snapshot, the heartbeat of its loop stalled longest
  (``EchoServer.oldest_loop``): the supervisor replaces a worker whose loop stalls, or
  that stops sending, for ``--worker-timeout`` (monitor.py);
- the main thread waits for a stop (and hears ``("watch", bool)``: whether the
  supervisor wants the events themselves): ``drain`` on the control pipe, the control pipe's
  end (the supervisor is gone), or SIGTERM. Then it drains (EchoServer.shutdown), sends
  its final snapshot and exits 0 (1 if a server thread had failed).

SIGINT, SIGQUIT, SIGHUP and SIGUSR1 are ignored here: a Ctrl-C in a terminal reaches
the whole process group, and the supervisor alone decides what a signal means.

Threads: ``main`` on the process's main thread; Uplink as an Actor (``send`` from any
thread); GlobalStats as Stats (any thread).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import resource
import selectors
import signal
import socket
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from server.config import Config
from server.engine.os_names import name_process
from server.listeners import Listener
from server.observe.actor import Actor
from server.observe.events import Event
from server.observe.exchange import Exchange
from server.observe.lines import format_event
from server.observe.logger import LEVELS
from server.observe.stats import REJECT_PER_IP, Stats
from server.observe.throttle import Throttle
from server.observe.totals import pack
from server.workers.shared_limits import BUSY, CONTENDED_S, SharedLimits
from server.workers.worker_connections import ASK, answer_question

if TYPE_CHECKING:
    from server.faults.policy import FaultPolicy

MIN_UDP_RATE = 0.001  # the lowest udp_rate a Config accepts
SNAPSHOT_INTERVAL_S = 0.5  # how often a worker's counters reach the supervisor
BATCH = 256  # messages sent up the pipe in one write, at most
# Woken by a message, the Uplink lets the burst it begins gather this long (Actor's
# gather_s), then sends it as one batch: the supervisor takes a busy worker's lines by
# the dozen. It is also what a worker killed by SIGKILL may leave unsaid: this long's worth.
LINGER_S = 0.02
DRAIN = "drain"  # the supervisor's command to stop (the others: WATCH, FAULTS, a /connections question)
HAND_OVER = "hand over"  # stop, leaving the listeners' queued connections to the next generation
WATCH = "watch"
# Worker events that the supervisor's own events replace (it acts on them, not logs them).
SUMMED_UP = frozenset({"started", "listening", "ready", "stopping", "stopped", "stats"})
FAULTS = "faults"
_UNLIMITED = 1 << 62

log = logging.getLogger("echo.worker")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int  # the worker's slot, 0 .. workers-1 (the ``worker`` label)
    generation: int
    config: Config
    listeners: tuple[Listener, ...]  # the supervisor's, inherited (listeners.py)
    limits: SharedLimits
    row: int
    uplink: Pipe  # write end: worker -> supervisor
    control: Pipe  # read end: supervisor -> worker
    log_lines: bool = False  # format its events' log lines itself (Uplink)
    faults: dict[str, Any] | None = None  # --faults on: the supervisor's policy now (FaultPolicy.export)


def worker_config(config: Config) -> Config:
    """What a worker runs: the admin endpoint and the periodic stats events belong to
    the supervisor. Every worker reads the one UDP socket, so each gets 1/N of the UDP
    rates: a source's datagrams spread over the workers, and one that a single worker
    happens to read alone is held to 1/N of its rate (stricter, never looser)."""
    n = config.workers
    return dataclasses.replace(
        config,
        admin_port=None,
        stats_interval=0.0,
        workers=1,
        udp_rate=max(config.udp_rate / n, MIN_UDP_RATE),
        udp_global_rate=max(config.udp_global_rate / n, MIN_UDP_RATE),
        faults_rules=None,  # the supervisor's policy comes in the spec (its states keep their time)
    )


class GlobalStats(Stats):
    """Stats whose admission asks the shared limits (one check for all workers), then
    counts here what they decided, under the same reason. The same for the two steps
    of PROXY protocol admission (see stats.py).

    If the admission lock stays held (shared_limits.BUSY: its holder was preempted, or
    is stopped or frozen), ``admit`` and ``reserve`` say BUSY, counting nothing: the
    acceptor yields and tries again (acceptor.py). ``admit_reserved`` (after a PROXY
    header, on a connection's scheduler) rejects instead, as max_connections_per_ip
    (fail closed), with a warning at most once a second."""

    def __init__(self, limits: SharedLimits) -> None:
        super().__init__()
        self._limits = limits
        self._busy_lock = threading.Lock()
        self._busy_throttle = Throttle()

    def admit(self, ip: str, max_total: int, max_per_ip: int, listener: str = "tcp") -> str | None:
        reason = self._limits.admit(ip, max_total, max_per_ip)
        if reason == BUSY:
            return reason  # nothing decided, nothing counted: try again
        if reason is None:
            return super().admit(ip, _UNLIMITED, _UNLIMITED, listener)  # counts it here
        super().reject(reason)
        return reason

    def reserve(self, max_total: int) -> str | None:
        reason = self._limits.reserve(max_total)
        if reason == BUSY:
            return reason  # as admit
        if reason is None:
            return super().reserve(_UNLIMITED)
        super().reject(reason)
        return reason

    def admit_reserved(self, ip: str, max_per_ip: int, listener: str = "tcp") -> str | None:
        reason = self._limits.admit_reserved(ip, max_per_ip)
        if reason == BUSY:
            self._limits.unreserve()  # the place goes back, as with any rejection
        reason = self._settle(reason, REJECT_PER_IP)
        if reason is None:
            return super().admit_reserved(ip, _UNLIMITED, listener)
        super().reject_reserved(reason)
        return reason

    def reject_reserved(self, reason: str) -> None:
        self._limits.unreserve()
        super().reject_reserved(reason)

    def connection_closed(self, ip: str, *args: Any, **kwargs: Any) -> None:
        super().connection_closed(ip, *args, **kwargs)
        self._limits.release(ip)

    def _settle(self, reason: str | None, busy_as: str) -> str | None:
        """``busy_as`` for BUSY (fail closed, said at most once a second), else ``reason``."""
        if reason != BUSY:
            return reason
        with self._busy_lock:
            held_back = self._busy_throttle.allow()
        if held_back is not None:
            log.warning(
                "the admission lock stayed held over %.0f ms (a preempted, stopped or frozen worker?): "
                "rejecting as %s (%d times in this worker so far)",
                CONTENDED_S * 1000,
                busy_as,
                self._limits.contended,
            )
        return busy_as


def wire_event(record: Event) -> tuple[Any, ...]:
    return ("e", record.name, record.level, record.conn_id, record.peer, dict(record.data), record.at)


def wire_log(record: logging.LogRecord) -> tuple[Any, ...]:
    message = record.getMessage()
    if record.exc_info and record.exc_info[0] is not None:
        message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return ("l", record.name, record.levelno, message, record.created)


class Uplink(Actor):
    """Events, log records and snapshots up the pipe, in batches (see the module docstring).

    With ``log_lines`` (the supervisor has a LogActor), the worker formats its events'
    log lines itself, as the supervisor's LogActor would (with ``worker``), and sends
    each batch's lines as one text: the supervisor writes them without unpickling an
    event, building it again or formatting it (its cost per connection is what bounds a
    host with many workers). Events go up as events too only while ``watched`` (the
    supervisor has /events readers), and the lifecycle ones (SUMMED_UP) always: the
    supervisor acts on them and writes its own lines for them."""

    def __init__(
        self,
        pipe: Pipe,
        stats: Stats,
        mailbox_size: int,
        *,
        worker: int = 0,
        log_lines: bool = False,
        log_format: str = "text",
        log_level: str = "info",
    ) -> None:
        super().__init__("uplink", mailbox_size, gather_s=LINGER_S)
        self._pipe = pipe
        self._stats = stats
        self._batch: list[tuple[Any, ...]] = []
        self._lines: list[str] = []
        self._broken = False
        self._worker = worker
        self._worker_field = {"worker": worker}  # after each line's own fields
        self._log_lines = log_lines
        self._json = log_format == "json"
        self._threshold = LEVELS[log_level]
        self.watched = False  # set by the main thread (the supervisor says so)
        self.handler = _UplinkHandler(self)

    def send(self, message: Any) -> bool:  # any thread
        delivered = super().send(message)
        if not delivered:
            self._stats.log_event_dropped()
        return delivered

    def handle(self, message: Any) -> None:
        if isinstance(message, Event):
            if not self._log_lines or message.name in SUMMED_UP:
                self._batch.append(wire_event(message))
            else:
                if LEVELS.get(message.level, logging.INFO) >= self._threshold:
                    self._lines.append(format_event(message, json_lines=self._json, extra=self._worker_field))
                if self.watched:
                    self._batch.append(("w", *wire_event(message)[1:]))
        elif isinstance(message, logging.LogRecord):
            self._batch.append(wire_log(message))
        else:
            self._batch.append(message)
        if len(self._batch) + len(self._lines) >= BATCH:
            self._flush()

    def idle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._lines:
            self._batch.append(("L", "".join(self._lines), len(self._lines)))
            self._lines = []
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        if self._broken:
            return
        try:
            self._pipe.send(batch)
        except OSError:
            self._broken = True  # the supervisor is gone; the control pipe tells main()


class _UplinkHandler(logging.Handler):
    def __init__(self, uplink: Uplink) -> None:
        super().__init__()
        self._uplink = uplink

    def emit(self, record: logging.LogRecord) -> None:
        self._uplink.send(record)


def main(spec: WorkerSpec) -> None:
    """The worker process's entry point (see the module docstring)."""
    from server.core import EchoServer  # here: the spawned child imports this module first

    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    # A hung worker gets SIGABRT (monitor.py): every thread's stack on stderr, no core file.
    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # set_wakeup_fd does the telling

    name_process(f"echo-worker {spec.index}")  # as the logs' ``worker`` field
    config = worker_config(spec.config)
    spec.limits.bind(spec.row)
    stats = GlobalStats(spec.limits)
    exchange = Exchange("events")
    uplink = Uplink(
        spec.uplink,
        stats,
        config.log_queue,
        worker=spec.index,
        log_lines=spec.log_lines,
        log_format=config.log_format,
        log_level=config.log_level,
    )
    echo_logger = logging.getLogger("echo")
    echo_logger.setLevel(LEVELS[config.log_level])
    echo_logger.propagate = False
    echo_logger.addHandler(uplink.handler)
    uplink.start()
    exchange.attach(uplink)
    for listener in spec.listeners:
        listener.sock.setblocking(False)
    server = EchoServer(
        config,
        stats=stats,
        exchange=exchange,
        listeners=spec.listeners,
        worker=spec.index,
        next_id=spec.limits.next_id,
    )
    if server.faults is not None and spec.faults is not None:
        server.faults.install(spec.faults)
    failed: list[BaseException] = []

    def on_failure(error: BaseException) -> None:  # any thread
        failed.append(error)
        try:
            wake_w.send(b"\xff")
        except OSError:
            pass

    server.add_failure_callback(on_failure)
    code = 0
    try:
        server.start()
        why = _wait_for_stop(spec.control, wake_r, stats, uplink, failed, server)
        server.shutdown(hand_over=why == HAND_OVER)
        code = 1 if failed else 0
    finally:
        uplink.send_wait(("f", pack(stats.snapshot())), 2.0)  # the totals need this one
        exchange.detach(uplink)
        echo_logger.removeHandler(uplink.handler)
        uplink.close(2.0)
        uplink.join(2.0)
        spec.uplink.close()
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
    if code:
        raise SystemExit(code)


def _wait_for_stop(
    control: Pipe, wake: socket.socket, stats: Stats, uplink: Uplink, failed: list[Any], server: Any
) -> str:
    """Send a snapshot, with the heartbeat of the loop stalled longest
    (``server.oldest_loop``), every SNAPSHOT_INTERVAL_S until a reason to stop arrives:
    HAND_OVER (a reload), else DRAIN. Meanwhile hear WATCH, answer the supervisor's
    /connections questions and take its fault policy."""
    faults: FaultPolicy | None = server.faults
    with selectors.DefaultSelector() as selector:
        selector.register(control.fileno(), selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while not failed:
            ready = selector.select(SNAPSHOT_INTERVAL_S)
            uplink.send(("s", pack(stats.snapshot()), *server.oldest_loop()))
            if faults is not None:
                uplink.send(("q", faults.report()))
            for key, _ in ready:
                if key.fileobj is wake:
                    try:
                        wake.recv(64)
                    except BlockingIOError:
                        pass
                    return DRAIN  # SIGTERM, or a failure
                try:
                    command = control.recv()
                except (EOFError, OSError):
                    return DRAIN  # the supervisor is gone: drain and go
                if command in (DRAIN, HAND_OVER):
                    return str(command)
                if isinstance(command, tuple) and command[:1] == (WATCH,):
                    uplink.watched = bool(command[1])
                elif isinstance(command, tuple) and command[:1] == (ASK,):
                    uplink.send(answer_question(server.connections, command))
                elif faults is not None and isinstance(command, tuple) and command[:1] == (FAULTS,):
                    faults.install(command[1])
    return DRAIN
