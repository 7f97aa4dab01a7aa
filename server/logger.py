"""LogActor: the one writer of log lines, fed by the events Exchange and ``logging``.

Server threads never format or write a log line: they publish an Event (or call a
``logging`` logger, whose handler posts the record), and this actor's thread turns it
into one line of text or JSON on stdout or a rotating, gzip-compressing file.

Never blocking a server thread: the mailbox is bounded (``log_queue``). When it is
full, an event is dropped and counted in Stats; when the actor catches up it writes
"dropped N log events". Lifecycle events (started ... stopped) wait up to a second
for room instead, so the first and last words of a run are not the ones lost.

Threads: ``send`` (as an Exchange subscriber) and the ``handler``'s ``emit`` from any
thread; everything else on the actor's thread. At shutdown, ``close`` posts the stop
marker after everything already sent, and ``join`` waits until it is all written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import IO, Any

from server.actor import Actor
from server.events import Event, event, iso_utc
from server.rotation import RotatingGzipFile
from server.stats import Stats
from server.throttle import Throttle

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LIFECYCLE = frozenset({"started", "listening", "ready", "stopping", "stopped"})
LIFECYCLE_WAIT_S = 1.0


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
        super().__init__("log-actor", mailbox_size)
        self._stats = stats
        self._json = log_format == "json"
        self._threshold = LEVELS[log_level]
        self._sink: IO[str] | RotatingGzipFile = (
            RotatingGzipFile(log_file, max_bytes, backups) if log_file else (stream or sys.stdout)
        )
        self._owns_sink = log_file is not None
        self._to_stdout = log_file is None and stream is None
        self._dropped_reported = 0
        self._failure_throttle = Throttle()
        self.handler = _MailboxHandler(self)
        self.handler.setLevel(self._threshold)

    # --- any thread ---------------------------------------------------------------

    def send(self, message: Any) -> bool:
        """Post an Event or LogRecord; never blocks (but for lifecycle events)."""
        if isinstance(message, Event):
            if LEVELS.get(message.level, logging.INFO) < self._threshold:
                return True
            if message.name in LIFECYCLE:
                delivered = self.send_wait(message, LIFECYCLE_WAIT_S)
            else:
                delivered = super().send(message)
        else:
            delivered = super().send(message)
        if not delivered:
            self._stats.log_event_dropped()
        return delivered

    # --- the actor's thread -----------------------------------------------------------

    def handle(self, message: Any) -> None:
        if isinstance(message, Event):
            record = message.as_dict()
        elif isinstance(message, logging.LogRecord):
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
        try:
            self._sink.flush()
        except OSError as error:
            self._write_failed(error)

    def _write(self, line: str) -> None:
        try:
            self._sink.write(line)
        except OSError as error:
            self._stats.log_event_dropped()
            self._write_failed(error)

    def _write_failed(self, error: OSError) -> None:
        """A full disk or a closed stdout must not stop the actor: drop, count, say so
        on stderr at most once a second. A broken stdout pipe is gone for good: write
        to /dev/null from now on, so that exiting does not trip over it either."""
        if isinstance(error, BrokenPipeError) and self._to_stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        held_back = self._failure_throttle.allow()
        if held_back is not None:
            try:
                print(
                    f"echo-server: cannot write the log ({error.strerror or error}); dropping lines "
                    f"({held_back} more failures since last said)",
                    file=sys.stderr,
                    flush=True,
                )
            except OSError:
                pass

    def join(self, timeout: float | None = None) -> bool:
        ended = super().join(timeout)
        if ended and self._owns_sink:
            self._sink.close()
        return ended

    def _format(self, record: dict[str, Any]) -> str:
        if self._json:
            return json.dumps(record, separators=(",", ":"), default=str) + "\n"
        name = record.pop("event")
        if name == "log":  # a logging record: "<ts> <LEVEL> <logger>: <message>"
            name = record.pop("logger") + ":"
        head = f"{record.pop('ts')} {record.pop('level').upper():7} {name}"
        message = record.pop("message", None)
        exc = record.pop("exc", None)
        parts = [head] + [f"{key}={_text_value(value)}" for key, value in record.items()]
        if message is not None:
            parts.append(str(message))
        line = " ".join(parts)
        return line + ("\n" + exc if exc else "") + "\n"


def _text_value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)


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
