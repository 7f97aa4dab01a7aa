"""The child of test_shared_limits_deaths: a worker that dies at its n-th instruction
inside SharedLimits. Kept apart, importing only shared_limits, so that the forkserver
can preload it and each child starts in a few milliseconds."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import server.workers.shared_limits as shared_limits_module
from server.workers.shared_limits import SharedLimits

FINISHED = 0
DIED = 17
LIMIT = 1_000
_FILE = shared_limits_module.__file__


def _call(limits: SharedLimits, method: str) -> None:
    if method == "admit":
        limits.admit("127.9.0.1", LIMIT, LIMIT)
    elif method == "reserve":
        limits.reserve(LIMIT)
    elif method == "admit_reserved":
        limits.admit_reserved("127.9.0.1", LIMIT)
    elif method == "unreserve":
        limits.unreserve()
    elif method == "release":
        limits.release("127.9.0.1")
    elif method == "next_id":
        limits.next_id()


def _prepare(limits: SharedLimits, method: str) -> None:
    """Put the row in the state the method expects (untraced)."""
    if method in ("admit_reserved", "unreserve"):
        assert limits.reserve(LIMIT) is None
    elif method == "release":
        assert limits.admit("127.9.0.1", LIMIT, LIMIT) is None
    elif method == "next_id":
        limits._ids.clear()  # so that it takes one under the lock


def die_at(limits: SharedLimits, row: int, method: str, instruction: int) -> None:
    limits.bind(row)
    _prepare(limits, method)
    executed = 0

    def tracer(frame: FrameType, kind: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal executed
        if frame.f_code.co_filename != _FILE:
            return None
        frame.f_trace_opcodes = True
        if kind == "opcode":
            executed += 1
            if executed >= instruction:
                os._exit(DIED)
        return tracer

    sys.settrace(tracer)
    _call(limits, method)
    sys.settrace(None)
    os._exit(FINISHED)


def hold_and_stop(limits: SharedLimits, row: int, held: Any) -> None:
    """Take the admission lock, say so, and stop (SIGSTOP) while holding it."""
    limits.bind(row)
    assert limits._lock()
    held.send(b"held")
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(FINISHED)
