"""Heartbeat verdicts over a server's scheduler loops (any thread).

Each Scheduler tells how long it has been stuck in a task that does not yield
(``stalled_for``, scheduler.py); these pure functions pick the worst loop and turn that
into what /healthz says. Any thread may call them: they read one float per loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Loop(Protocol):
    """What a heartbeat needs of a scheduler."""

    name: str

    def stalled_for(self) -> float: ...


def most_stalled(loops: Iterable[Loop | None]) -> tuple[str, float]:
    """The loop stalled longest and for how long (any thread); ("", 0.0) if none is."""
    name, worst = "", 0.0
    for loop in loops:
        if loop is not None:
            stalled = loop.stalled_for()
            if stalled > worst:
                name, worst = loop.name, stalled
    return name, worst


def stall_problem(name: str, stalled_s: float, limit_s: float) -> str | None:
    """What /healthz says of a loop stalled ``stalled_s``: None while within ``limit_s``
    (0: never a problem)."""
    if limit_s <= 0 or stalled_s <= limit_s:
        return None
    return f"{name} has not turned for {stalled_s:.1f} s"
