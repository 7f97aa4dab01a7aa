"""Deadlines: the scheduler's timer heap, ordered by construction, cancelled lazily.

One heap of ``(when, seq, task)`` entries, the shape of asyncio's timer heap. Why a
heap and not gunicorn's remove-on-activity list: activity here is every message, and
the echo hot path must not touch a timer structure. So a task's wait only records when
it began and how long it may last (``Task.wait_since``, ``Task.timeout``); the heap is
touched only when that deadline would come *earlier* than the task's entry already
there (``Task.armed``): once per kind of wait, not once per message.

Invariant: a task with a deadline has a live entry with ``armed <= its true deadline``.
So popping every entry with ``when <= now`` finds every task that is due. A popped
live entry whose task was active since is re-pushed at the true deadline (exact, never
late); a due one is handed back to fire. An entry is stale once its task ended or was
re-armed earlier; stale entries are counted, skipped when popped, and the heap is
rebuilt without them as soon as they are more than COMPACT_MIN and outnumber the live
ones (looked at as each entry goes stale, never in the scheduler's turn).
An entry is told from a stale one by its sequence number, not its time (a task can be
armed again at the very time of an entry it left). So a closed task's entry outlives
it until its own time or the next compaction, whichever comes first, and the heap
never holds more than about twice the live entries (plus COMPACT_MIN).

Used by one Scheduler, on its thread only.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

COMPACT_MIN = 64  # stale entries tolerated before a rebuild is worth its O(n)


class Timed(Protocol):
    """What a heap entry needs of its task (the scheduler's Task)."""

    armed: float | None  # ``when`` of the task's live entry; None = no live entry
    armed_seq: int  # that entry's sequence number: what tells it from a stale one

    def due(self) -> float | None: ...


T = TypeVar("T", bound=Timed)


class Deadlines(Generic[T]):
    def __init__(self) -> None:
        # Earliest entry at [0]. The same list object for the Deadlines' whole life
        # (compaction rebuilds it in place), so the scheduler's loop keeps a reference
        # and reads heap[0][0] without a call; only Deadlines changes it.
        self.heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()
        self.stale = 0

    def __len__(self) -> int:
        """Entries held, live and stale."""
        return len(self.heap)

    def next_when(self) -> float | None:
        """The earliest entry's time (maybe stale: then an early wake-up, never a late one)."""
        return self.heap[0][0] if self.heap else None

    def arm(self, task: T, when: float) -> None:
        """Make sure ``task`` is looked at by ``when``: call when its new wait's deadline
        is earlier than ``task.armed`` (or it has none)."""
        replaced = task.armed is not None  # the later entry stays in the heap, stale
        seq = next(self._order)
        task.armed = when
        task.armed_seq = seq
        heapq.heappush(self.heap, (when, seq, task))
        if replaced:
            self._went_stale()

    def cancel(self, task: T) -> None:
        """The task ended: its entry, if any, is stale from now on."""
        if task.armed is not None:
            task.armed = None
            self._went_stale()

    def pop_due(self, now: float) -> Iterator[T]:
        """Yield each task whose deadline is at or before ``now``; re-arm the rest that
        an entry <= now stood for. The caller may arm and cancel while iterating."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, seq, task = heapq.heappop(heap)
            if task.armed is None or task.armed_seq != seq:
                self.stale -= 1
                continue
            task.armed = None
            due = task.due()
            if due is None:  # its current wait has no deadline
                continue
            if due > now:
                self.arm(task, due)
            else:
                yield task

    def _went_stale(self) -> None:
        """One more entry is stale: rebuild the heap without them once they are more
        than COMPACT_MIN and outnumber the live ones (O(n), paid for by n/2 stale ones)."""
        self.stale += 1
        if self.stale > COMPACT_MIN and self.stale * 2 > len(self.heap):
            # In place: the scheduler holds this list, and pop_due may be iterating it.
            self.heap[:] = [e for e in self.heap if e[2].armed is not None and e[2].armed_seq == e[1]]
            heapq.heapify(self.heap)
            self.stale = 0
