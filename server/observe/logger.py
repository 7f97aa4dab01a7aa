"""LogActor: the one writer of log lines, fed by the events Exchange and ``logging``.

Server threads never format or write a log line: they publish an Event (or call a
``logging`` logger, whose handler posts the record), and this actor's thread turns it
into one line of text or JSON on stdout, a rotating gzip-compressing file, a pipe or a
device (see sinks.py).

Never blocking a server thread: the mailbox is bounded (``log_queue``). When it is
full, an event is dropped and counted in Stats; when the actor catches up it writes
"dropped N log events". Lifecycle events (started ... stopped) wait up to a second
for room instead, so the first and last words of a run are not the ones lost; but for
``ready``, which a scheduler thread publishes: it never waits.

Never stopping for the log: a line that cannot be written (a full disk, a closed pipe)
is dropped and counted in the same Stats counter; stderr says so at most once a second
and, at the end, how many lines were lost in all.

Threads: ``send`` (as an Exchange subscriber), the ``handler``'s ``emit`` and
``reopen`` from any thread; everything else on the actor's thread. At shutdown,
``close`` posts the stop marker after everything already sent, and ``join`` waits
until it is all written (the main thread).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable
from typing import IO, Any

from server.observe.actor import Actor
from server.observe.events import Event, event, iso_utc
from server.observe.lines import format_event, format_record
from server.observe.sinks import FdSink, LogSink, TextSink, open_sink
from server.observe.stats import Stats
from server.observe.throttle import Throttle

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LIFECYCLE = frozenset({"started", "listening", "ready", "stopping", "stopped"})
# Those that wait for room: not "ready", published on the acceptor's scheduler thread,
# which never waits (and the mailbox then holds only the few lines of the start).
WAITS_FOR_ROOM = LIFECYCLE - {"ready"}
LIFECYCLE_WAIT_S = 1.0
# Lines reach the sink at most this late, and a busy server's log costs one wake-up of
# this thread per GATHER_S instead of one per line (see actor.py).
GATHER_S = 0.02
_REOPEN = object()  # wakes the actor to look at its reopen request


class LogActor(Actor):
    def __init__(
        self,
        stats: Stats,
        *,
        log_format: str = "text",
        log_level: str = "info",
        mailbox_size: int = 10_000,
        stream: IO[str] | None = None,
        log_file: str | None = None,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
    ) -> None:
        super().__init__("log-actor", mailbox_size, gather_s=GATHER_S)
        self._stats = stats
        self._json = log_format == "json"
        self._threshold = LEVELS[log_level]
        self._failure_throttle = Throttle()
        self._lost = 0  # lines the sink could not write (the actor's thread, then join's)
        self._summarized = False
        self._last_problem = ""
        self._sink: LogSink
        if log_file is not None:
            self._sink = open_sink(log_file, max_bytes, backups, self._sink_failed)  # raises LogFileError
        elif stream is not None:
            self._sink = TextSink(stream, self._sink_failed)
        else:
            self._sink = _stdout_sink(self._sink_failed)
        self._reopen_requested = threading.Event()
        self._dropped_reported = 0
        self.handler = _MailboxHandler(self)
        self.handler.setLevel(self._threshold)

    # --- any thread ---------------------------------------------------------------

    def send(self, message: Any) -> bool:
        """Post an Event or LogRecord; never blocks (but for lifecycle events)."""
        if isinstance(message, Event):
            if LEVELS.get(message.level, logging.INFO) < self._threshold:
                return True
            if message.name in WAITS_FOR_ROOM:
                delivered = self.send_wait(message, LIFECYCLE_WAIT_S)
            else:
                delivered = super().send(message)
        else:
            delivered = super().send(message)
        if not delivered:
            self._stats.log_event_dropped()
        return delivered

    def send_lines(self, text: str, count: int) -> bool:
        """Post ``count`` lines formatted elsewhere, written in one piece; never blocks
        (if the mailbox is full they are dropped and counted, as events are)."""
        delivered = super().send(Lines(text, count))
        if not delivered:
            for _ in range(count):
                self._stats.log_event_dropped()
        return delivered

    def reopen(self) -> None:
        """Ask for the log file to be reopened (SIGUSR1): lines handled from now on go
        to a file opened afresh at the same path. Never blocks; a no-op but for files."""
        if not super().send(_REOPEN):  # in order after what was sent before
            self._reopen_requested.set()  # full: the actor is busy and sees the flag at once

    # --- the actor's thread -----------------------------------------------------------

    def handle(self, message: Any) -> None:
        if message is _REOPEN or self._reopen_requested.is_set():
            self._reopen()
            if message is _REOPEN:
                return
        if type(message) is Lines:  # a worker's batch, formatted there
            self._write(message.text)
            return
        if isinstance(message, Event):
            self._write(format_event(message, json_lines=self._json))
            return
        if isinstance(message, logging.LogRecord):
            record = _record_fields(message)
        else:
            record = {"ts": iso_utc(0), "level": "error", "event": "log", "message": repr(message)}
        self._write(self._format(record))

    def idle(self) -> None:
        dropped = self._stats.log_events_dropped_total()
        if dropped > self._dropped_reported:
            note = event("log_dropped", level="warning", dropped=dropped - self._dropped_reported, total=dropped)
            self._dropped_reported = dropped
            self._write(self._format(note.as_dict()))
        self._sink.flush()

    def _write(self, line: str) -> None:
        self._sink.write(line)

    def _reopen(self) -> None:
        self._reopen_requested.clear()
        if self._sink.reopen():
            self._write(self._format(event("log_reopened").as_dict()))

    def _sink_failed(self, problem: str, lines_lost: int) -> None:
        """A full disk or a closed stdout must not stop the actor: drop, count, say so
        on stderr at most once a second."""
        for _ in range(lines_lost):
            self._stats.log_event_dropped()
        self._lost += lines_lost
        self._last_problem = problem
        held_back = self._failure_throttle.allow()
        if held_back is not None:
            lost = f": {self._lost} log line{'s' if self._lost != 1 else ''} lost so far" if self._lost else ""
            more = f" ({held_back} more problems since last said)" if held_back else ""
            _say(f"{problem}{lost}{more}")

    # --- the main thread, at the end ----------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the actor; once it has ended, close the sink and, if lines were
        lost, say how many in all (one line, the last word on the matter)."""
        ended = super().join(timeout)
        if ended:
            self._sink.close()
            if self._lost and not self._summarized:
                _say(f"{self._last_problem}: {self._lost} log lines lost in all")
                self._summarized = True
        return ended

    def _format(self, record: dict[str, Any]) -> str:
        return format_record(record, json_lines=self._json)


class Lines:
    """Log lines formatted elsewhere (a worker's, in a batch): written as they are."""

    __slots__ = ("count", "text")

    def __init__(self, text: str, count: int) -> None:
        self.text = text
        self.count = count


def _say(line: str) -> None:
    """One line on stderr (not through ``logging``: it may be what is failing)."""
    try:
        print(f"echo-server: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _stdout_sink(report: Callable[[str, int], None]) -> LogSink:
    """stdout's descriptor, written directly: sys.stdout's buffer then never holds a
    line that a closed pipe would make fail again at exit."""
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something without a descriptor
        return TextSink(sys.stdout, report)
    return FdSink(fd, report, owns=False)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": iso_utc(record.created),
        "level": record.levelname.lower(),
        "event": "log",
        "logger": record.name,
        "message": record.getMessage(),
    }
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return fields


class _MailboxHandler(logging.Handler):
    """A logging handler that only posts the record to the LogActor (any thread)."""

    def __init__(self, actor: LogActor) -> None:
        super().__init__()
        self._actor = actor

    def emit(self, record: logging.LogRecord) -> None:
        self._actor.send(record)
