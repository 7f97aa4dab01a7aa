"""``GET /connections`` under ``--workers N``: the supervisor asks each worker, which asks
its own schedulers (server/live_connections.py), and merges the answers.

    admin thread ──WorkerConnections.rows(query)──► Ask ──Monitor.ask──► monitor thread
        monitor thread ──("ask", id, kind, args) down each worker's control pipe──►
        worker main thread: answer(...) ──("c", id, answer) up its pipe──► monitor thread
        ──Ask.answer(worker, payload)──► the admin thread, waiting on the Ask

Each question has one deadline (connections.ASK_TIMEOUT_S) for every worker together: a
worker that is not ready, draining, whose control pipe is full (a stopped process), or
that has not answered in time is named in ``unanswered`` (``worker-N``) and left out;
the admin thread never waits longer, and an answer arriving after it is dropped by the
monitor (the Ask is done). Connection ids are per worker, so ``/connections/ID`` may
match in several workers: ``detail`` returns the first, ``?worker=N`` picks one.

Threads: ``WorkerConnections`` on admin handler threads; ``Ask.expect``/``answer`` on
the monitor thread (under the Ask's lock); ``answer_question`` on a worker's main thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from server.observe.connections import ASK_TIMEOUT_S, Key, Query, Rows, Source, sort_rows

ASK = "ask"  # the control message's tag
ANSWER = "c"  # the up-pipe message's tag
_ids = itertools.count(1)


class Ask:
    """One question to every live worker, and the answers as they come."""

    def __init__(self, kind: str, args: tuple[Any, ...], timeout: float) -> None:
        self.id = next(_ids)
        self.kind = kind
        self.args = args
        self.deadline = time.monotonic() + timeout
        self.sent = threading.Event()  # the monitor has asked every worker it could
        self.done = threading.Event()  # every worker asked has answered
        self._lock = threading.Lock()
        self._asked: set[int] = set()
        self._answers: dict[int, Any] = {}

    @property
    def message(self) -> tuple[Any, ...]:
        return (ASK, self.id, self.kind, self.args)

    def expect(self, worker: int) -> None:  # the monitor thread
        with self._lock:
            self._asked.add(worker)

    def sent_all(self) -> None:  # the monitor thread, after the last expect
        with self._lock:
            if self._asked <= self._answers.keys():
                self.done.set()
        self.sent.set()

    def answer(self, worker: int, payload: Any) -> None:  # the monitor thread
        with self._lock:
            if worker not in self._asked or self.done.is_set():
                return
            self._answers[worker] = payload
            if self.sent.is_set() and self._asked <= self._answers.keys():
                self.done.set()

    def wait(self) -> tuple[dict[int, Any], list[str]]:
        """The answers that came by the deadline, and the workers that did not answer."""
        self.sent.wait(max(0.0, self.deadline - time.monotonic()))
        self.done.wait(max(0.0, self.deadline - time.monotonic()))
        with self._lock:
            self.done.set()  # from here on, late answers are dropped
            answers = dict(self._answers)
            missing = sorted(self._asked - answers.keys())
        return answers, [f"worker-{index}" for index in missing]


class WorkerConnections:
    """The supervisor's ``Source``: every worker's connections (see the module docstring)."""

    def __init__(self, ask: Callable[[Ask], None], listeners: tuple[str, ...], timeout: float = ASK_TIMEOUT_S) -> None:
        self._ask = ask
        self.listeners = listeners
        self._timeout = timeout

    def _question(self, kind: str, *args: Any) -> tuple[dict[int, Any], list[str]]:
        request = Ask(kind, args, self._timeout)
        self._ask(request)
        return request.wait()

    def rows(self, query: Query) -> Rows:
        answers, unanswered = self._question("rows", query)
        total = 0
        rows: list[dict[str, Any]] = []
        for worker, found in sorted(answers.items()):
            total += found.total
            rows += found.rows
            unanswered += [f"worker-{worker}/{name}" for name in found.unanswered]
        sort_rows(rows, query.sort)
        return Rows(total, rows[: query.window], unanswered)

    def rtts(self, keys: Collection[Key]) -> tuple[dict[Key, int | None], list[str]]:
        answers, unanswered = self._question("rtts", tuple(keys))  # each worker takes its own
        merged: dict[Key, int | None] = {}
        for found, _ in answers.values():
            merged.update(found)
        return merged, unanswered

    def detail(self, conn_id: int, worker: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
        answers, unanswered = self._question("detail", conn_id, worker)
        found = [facts for _, (facts, _) in sorted(answers.items()) if facts is not None]
        return (found[0] if found else None), unanswered


def answer_question(source: Source | None, message: tuple[Any, ...]) -> tuple[Any, ...]:
    """A worker's answer to the supervisor's ``message`` (its main thread), for its pipe."""
    _, request_id, kind, args = message
    result: Any
    if source is None:
        result = None
    elif kind == "rows":
        result = source.rows(args[0])
    elif kind == "rtts":
        result = source.rtts(args[0])
    elif kind == "detail":
        result = source.detail(args[0], args[1])
    else:
        result = None
    return (ANSWER, request_id, result)
