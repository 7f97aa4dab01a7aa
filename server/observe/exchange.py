"""Exchange: named publish/subscribe channels for server events.

``get_exchange(name)`` returns the process-wide Exchange of that name. Subscribers are
anything with a ``send(event)`` method that must not block (an Actor's mailbox, a
bounded queue). Any thread may ``attach``, ``detach`` and ``send`` at any time:
subscribers live in an immutable tuple that attach/detach replace under a lock, so
``send`` takes no lock and a subscriber list never changes under a sender's feet.

A subscriber that raises is counted and reported (at most once a second) through the
``logging`` module; delivery to the others goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from server.observe.throttle import Throttle

log = logging.getLogger("echo.exchange")


class Subscriber(Protocol):
    def send(self, event: Any) -> object: ...


class Exchange:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._failures = 0
        self._report_throttle = Throttle()
        # Told after each attach/detach (on that thread): the supervisor asks its workers
        # for their events only while someone besides its log reads them.
        self.on_change: Callable[[], None] | None = None

    def attach(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)
        if self.on_change is not None:
            self.on_change()

    def detach(self, subscriber: Subscriber) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            self._subscribers = tuple(subscribers)
        if self.on_change is not None:
            self.on_change()

    @contextmanager
    def subscribed(self, subscriber: Subscriber) -> Iterator[Subscriber]:
        self.attach(subscriber)
        try:
            yield subscriber
        finally:
            self.detach(subscriber)

    def send(self, event: Any) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.send(event)
            except Exception:
                self._report(subscriber)

    def send_except(self, event: Any, skipped: Subscriber | None) -> None:
        """``send`` to every subscriber but ``skipped`` (the supervisor's log, for events
        whose lines a worker has already written)."""
        for subscriber in self._subscribers:
            if subscriber is skipped:
                continue
            try:
                subscriber.send(event)
            except Exception:
                self._report(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def failures(self) -> int:
        """How many deliveries raised."""
        return self._failures

    def _report(self, subscriber: Subscriber) -> None:
        with self._lock:  # the Throttle has one owner at a time: whoever holds the lock
            self._failures += 1
            due = self._report_throttle.allow() is not None
        if due:
            log.exception(
                "subscriber %r of exchange %r failed (%d failures so far)", subscriber, self.name, self._failures
            )


_exchanges: dict[str, Exchange] = {}
_exchanges_lock = threading.Lock()


def get_exchange(name: str) -> Exchange:
    """The process-wide Exchange called ``name``, created on first use."""
    with _exchanges_lock:
        exchange = _exchanges.get(name)
        if exchange is None:
            exchange = _exchanges[name] = Exchange(name)
        return exchange
