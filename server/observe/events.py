"""Server events: small immutable records published on the events Exchange.

An Event says what happened, never what was sent: payload bytes are not a field and
no code path puts them in one. Field names are stable (the README documents them);
``as_dict`` is what the JSON log and /events write.

Names: started, listening, ready, opened, closed, rejected, accept_paused,
accept_resumed, failed, stopping, stopped, stats. Any thread may create and publish one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    level: str = "info"  # debug, info, warning, error
    conn_id: int | None = None
    peer: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    at: float = field(default_factory=time.time)  # wall clock, seconds since the epoch

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields: ts (ISO-8601 UTC), level, event, conn, peer, then the data."""
        record: dict[str, Any] = {"ts": iso_utc(self.at), "level": self.level, "event": self.name}
        if self.conn_id is not None:
            record["conn"] = self.conn_id
        if self.peer is not None:
            record["peer"] = self.peer
        record.update(self.data)
        return record


def event(name: str, *, level: str = "info", conn_id: int | None = None, peer: str | None = None, **data: Any) -> Event:
    return Event(name, level, conn_id, peer, MappingProxyType(data) if data else _EMPTY)


# The last second formatted, and its text: a busy log's lines share their second, and
# strftime(gmtime()) costs more than the rest of a short line. One tuple, replaced whole:
# any thread may read or replace it.
_last_second: tuple[int, str] = (-1, "")


def iso_utc(at: float) -> str:
    """2026-11-24T21:23:16.123Z (any thread)."""
    global _last_second
    seconds = int(at)
    millis = int((at - seconds) * 1000)
    cached_second, text = _last_second
    if seconds != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, text)
    return f"{text}.{millis:03d}Z"
