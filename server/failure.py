"""FailureRecord: the first fatal failure of a server, and who is told of it.

One instance each in EchoServer (core.py) and Supervisor (supervisor.py), as their
``_failures``; the FailureAttributes base gives both ``failure``, ``healthy`` and
``add_failure_callback`` from it (admin's ServerView and the CLI read those).

Rules:
- ``fail(what, error)`` logs every failure once, with its traceback when there is an
  exception, and publishes a ``failed`` event for each;
- only the first is recorded (``failure``; ``healthy`` turns False for good), runs the
  owner's ``on_first`` hook (it clears ``ready``) and goes to the callbacks: each
  callback is called once, ever;
- a callback must only record and wake someone: never block, never call the owner's
  shutdown(). It runs on the failing thread (or, added after the failure, on the
  caller's), possibly while that thread holds the owner's lifecycle lock.

Threads: every method may be called from any thread; a lock guards the record and the
callback list, and nothing is called while it is held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from server.observe.events import Event, event

FailureCallback = Callable[[BaseException], None]


class FailureRecord:
    def __init__(self, log: logging.Logger, publish: Callable[[Event], None], on_first: Callable[[], None]) -> None:
        """``log``: the owner's logger; ``publish``: its event sink; ``on_first``: called
        once, by the first failure, before the callbacks (e.g. clear ``ready``)."""
        self._log = log
        self._publish = publish
        self._on_first = on_first
        self._lock = threading.Lock()
        self._callbacks: list[FailureCallback] = []
        self.failure: BaseException | None = None

    @property
    def healthy(self) -> bool:
        return self.failure is None

    def add_callback(self, callback: FailureCallback) -> None:
        """``callback(error)`` runs once if the owner fails: on the failing thread, or on
        this caller's if it has already failed. Record and wake only (module docstring)."""
        with self._lock:
            failure = self.failure
            if failure is None:
                self._callbacks.append(callback)
        if failure is not None:
            callback(failure)

    def fail(self, what: str, error: BaseException | None) -> None:
        """Log and publish this failure; if it is the first, record it, run on_first and
        the callbacks. ``error`` None: ``what`` alone says it (no traceback)."""
        failure = error or RuntimeError(what)
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = failure
            callbacks = list(self._callbacks) if first else []
        self._log.error("fatal: %s", what, exc_info=failure if error is not None else None)
        self._publish(event("failed", level="error", reason=what))
        if not first:
            return
        self._on_first()
        for callback in callbacks:
            try:
                callback(failure)
            except Exception:
                self._log.exception("failure callback %r failed", callback)


class FailureAttributes:
    """The public face of an owner's ``_failures`` record (a base class of the owner)."""

    _failures: FailureRecord

    @property
    def failure(self) -> BaseException | None:
        """The first fatal failure, or None."""
        return self._failures.failure

    @property
    def healthy(self) -> bool:
        """False for good once the owner failed: /healthz says 503."""
        return self._failures.healthy

    def add_failure_callback(self, callback: FailureCallback) -> None:
        """``callback(error)`` runs once if the owner fails: on the failing thread, or on
        this caller's if it already has. It must only record and wake someone, never block
        or call the owner's shutdown(): it may run while that thread holds the owner's
        lifecycle lock."""
        self._failures.add_callback(callback)
