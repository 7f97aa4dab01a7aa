"""Stats snapshots across processes: to plain data and back, and their sum.

A worker process sends its ``StatsSnapshot`` up its pipe as plain data (``pack``:
MappingProxyType does not pickle); the supervisor turns it back (``unpack``) and adds
the workers' snapshots up (``add``) for /stats, /metrics and the ``stopped`` event.
The sum is field by field, driven by the dataclass's fields, so a counter added to
StatsSnapshot later is summed without a change here: whole numbers and mappings of them
add up, histograms add bucket by bucket, and a float (uptime) takes the largest.
``peak_active`` is summed too, which overstates a peak; the supervisor replaces it with
the peak of the summed ``active`` it has seen.

``WorkersSnapshot`` is the supervisor's view: the totals plus one ``WorkerRow`` per
worker slot (metrics.py renders them with a ``worker`` label; /stats lists them).

Pure functions on immutable values: any thread, any process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from server.observe.stats import Histogram, StatsSnapshot

_FIELDS = tuple(f.name for f in dataclasses.fields(StatsSnapshot))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    return value


def pack(snapshot: StatsSnapshot) -> dict[str, Any]:
    """Plain, picklable data: dicts for mappings, Histograms as they are."""
    return {name: _plain(getattr(snapshot, name)) for name in _FIELDS}


def unpack(data: Mapping[str, Any]) -> StatsSnapshot:
    """The snapshot ``pack`` made (fields it does not know are ignored)."""
    return StatsSnapshot(**{name: _frozen(value) for name, value in data.items() if name in _FIELDS})


def _add_values(a: Any, b: Any) -> Any:
    if isinstance(a, Histogram) and isinstance(b, Histogram):
        if a.bounds != b.bounds:
            return a
        counts = tuple(x + y for x, y in zip(a.counts, b.counts, strict=True))
        return Histogram(a.bounds, counts, a.total + b.total)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        merged = {key: _plain(value) for key, value in a.items()}
        for key, value in b.items():
            merged[key] = _add_values(merged[key], value) if key in merged else _plain(value)
        return _frozen(merged)
    if isinstance(a, bool) or isinstance(b, bool):
        return a or b
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, float | int) and isinstance(b, float | int):
        return max(a, b)
    return a


def add(a: StatsSnapshot, b: StatsSnapshot) -> StatsSnapshot:
    """Field-by-field sum of two snapshots (see the module docstring)."""
    return StatsSnapshot(**{name: _add_values(getattr(a, name), getattr(b, name)) for name in _FIELDS})


def total(snapshots: Iterable[StatsSnapshot]) -> StatsSnapshot:
    result = StatsSnapshot()
    for snapshot in snapshots:
        result = add(result, snapshot)
    return result


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker slot: its current process, generation, open connections, restarts."""

    worker: int
    pid: int
    generation: int
    active: int
    accepted: int
    restarts: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class WorkersSnapshot(StatsSnapshot):
    """The totals of every worker, plus a row per worker slot."""

    workers: tuple[WorkerRow, ...] = ()
    restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        document = StatsSnapshot.as_dict(self)
        document["restarts"] = self.restarts
        document["workers"] = [row.as_dict() for row in self.workers]
        return document

    @classmethod
    def of(cls, totals: StatsSnapshot, workers: tuple[WorkerRow, ...], restarts: int) -> WorkersSnapshot:
        fields = {name: getattr(totals, name) for name in _FIELDS}
        return cls(**fields, workers=workers, restarts=restarts)
