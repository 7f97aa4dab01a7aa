"""This process's live connections for GET /connections: the admin thread asks the
scheduler threads that own them (observe/connections.py's ``Source``, for EchoServer).

    source = LocalConnections(loops, ("tcp", "tls"), worker, facts)
    connections.listing(source, query)          # on an admin handler thread

How it asks: ``collect`` spawns a small task on each scheduler (engine/live.collect)
that copies cheap summaries a chunk at a time, with a scheduler turn between chunks;
``ask`` runs one call on each scheduler through ``call_soon_threadsafe`` (the page's
TCP_INFO, one connection's facts). Both wait at most one deadline for all schedulers
together: a scheduler that has not answered by then is named, and its answer, if it
comes later, is dropped (the Future was cancelled). Nothing here touches a task or a
socket from the admin thread.

Threads: ``LocalConnections`` methods and ``ask``/``collect`` run on admin handler
threads; what they hand the schedulers runs on the scheduler threads.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from server.engine import live
from server.engine.connection import Connection
from server.engine.live import Summary
from server.engine.scheduler import Scheduler
from server.observe.connections import ASK_TIMEOUT_S, Key, Query, Rows, Sort

T = TypeVar("T")


def ask(loops: Sequence[Scheduler], fn: Callable[[Scheduler], T], timeout: float) -> tuple[list[T], list[str]]:
    """``fn(loop)`` on each loop's own thread; the answers that came within ``timeout``
    (one deadline for all), and the names of the loops that did not answer."""

    def start(loop: Scheduler, future: Future[T]) -> None:
        loop.call_soon_threadsafe(_answer, future, fn, loop)

    return _gather(loops, start, timeout)


def collect(loops: Sequence[Scheduler], timeout: float) -> tuple[list[list[Summary]], list[str]]:
    """Every loop's connection summaries, each gathered by a live.collect task."""

    def start(loop: Scheduler, future: Future[list[Summary]]) -> None:
        loop.spawn_threadsafe(live.collect(loop, functools.partial(_settle, future)), daemon=True)

    return _gather(loops, start, timeout)


def _gather(
    loops: Sequence[Scheduler], start: Callable[[Scheduler, Future[T]], None], timeout: float
) -> tuple[list[T], list[str]]:
    asked: list[tuple[Scheduler, Future[T]]] = []
    for loop in loops:
        future: Future[T] = Future()
        start(loop, future)
        asked.append((loop, future))
    deadline = time.monotonic() + timeout
    answers: list[T] = []
    unanswered: list[str] = []
    for loop, future in asked:
        try:
            answers.append(future.result(max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            future.cancel()  # if it runs after all, it does nothing
            unanswered.append(loop.name)
    return answers, unanswered


def _settle(future: Future[T], answer: T) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(answer)


def _answer(future: Future[T], fn: Callable[[Scheduler], T], loop: Scheduler) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(loop))
    except BaseException as error:  # a bug: the asker gets it, the scheduler goes on
        future.set_exception(error)


def _sort_summaries(found: list[Summary], sort: Sort) -> None:
    """sort_rows' order, on summaries (before any row is built)."""
    if sort == "age":
        found.sort(key=lambda summary: (summary.opened_at, summary.conn))
    else:
        found.sort(key=lambda summary: (-(summary.bytes_in + summary.bytes_out), summary.conn))


class LocalConnections:
    """The connections of this process's schedulers (``Source``)."""

    def __init__(
        self,
        loops: Sequence[Scheduler],
        listeners: tuple[str, ...],
        worker: int | None,
        facts: Callable[[socket.socket, Connection], dict[str, Any]],
        timeout: float = ASK_TIMEOUT_S,
    ) -> None:
        self._loops = tuple(loops)
        self.listeners = listeners
        self._worker = worker
        self._facts = facts
        self._timeout = timeout

    def rows(self, query: Query) -> Rows:
        answers, unanswered = collect(self._loops, self._timeout)
        now = time.monotonic()
        matches = _matcher(query)
        found = [summary for summaries in answers for summary in summaries if matches(summary)]
        _sort_summaries(found, query.sort)
        return Rows(len(found), [self._row(summary, now) for summary in found[: query.window]], unanswered)

    def rtts(self, keys: Collection[Key]) -> tuple[dict[Key, int | None], list[str]]:
        wanted = frozenset(conn for worker, conn in keys if worker == self._worker)
        if not wanted:
            return {}, []
        answers, unanswered = ask(self._loops, lambda loop: live.rtts(loop, wanted), self._timeout)
        merged: dict[Key, int | None] = {}
        for found in answers:
            merged.update(((self._worker, conn), rtt) for conn, rtt in found.items())
        return merged, unanswered

    def detail(self, conn_id: int, worker: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
        if worker is not None and worker != self._worker:
            return None, []
        answers, unanswered = ask(self._loops, lambda loop: live.describe(loop, conn_id, self._facts), self._timeout)
        return next((found for found in answers if found is not None), None), unanswered

    def _row(self, summary: Summary, now: float) -> dict[str, Any]:
        return {
            "conn": summary.conn,
            "listener": summary.listener,
            "worker": self._worker,
            "peer": summary.peer,
            "via": summary.via,
            "age_s": round(now - summary.opened_at, 3),
            "bytes_in": summary.bytes_in,
            "bytes_out": summary.bytes_out,
            "state": summary.state,
            "rtt_us": None,
        }


def _matcher(query: Query) -> Callable[[Summary], bool]:
    """The query's filters as one predicate (the peer's network as an integer range, so
    10,000 summaries are matched in milliseconds, not by parsing each address)."""
    listener, network = query.listener, query.peer
    if network is None:
        return lambda summary: listener is None or summary.listener == listener
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    low, high = int(network.network_address), int(network.broadcast_address)

    def matches(summary: Summary) -> bool:
        if listener is not None and summary.listener != listener:
            return False
        try:
            value = int.from_bytes(socket.inet_pton(family, summary.ip))
        except OSError:  # the other family
            return False
        return low <= value <= high

    return matches
