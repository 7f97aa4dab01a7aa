"""Log lines: the one line of text or JSON that an event or a log record becomes.

    format_record(record, json_lines=False)    # the fields of any line, as a dict
    format_event(event, json_lines=False)      # an Event, without building that dict (text)

``format_record`` is the definition of both formats. ``format_event`` writes exactly
what ``format_record(event.as_dict())`` writes (tests compare the two over every kind of
field), but for the text format it goes straight from the Event's fields to the line:
the ``opened`` and ``closed`` lines are most of a busy server's log, and the dict, its
pops and a generator per field cost more than the line itself. An event whose fields
the short way does not cover (a ``message``, a field named like one the layout places
itself) takes the long way, through its dict.

Pure functions of their arguments: any thread may call them (the LogActor on its
thread, a worker's Uplink on its own).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from server.observe.events import Event, iso_utc

# json.dumps with options builds a new encoder per call; one encoder, shared, is the same
# output (it keeps no state between calls).
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)
# Names the text layout gives a place of their own (the head, the message at the end, a
# traceback on the next lines): an event whose data holds one takes the long way.
_PLACED = frozenset({"ts", "level", "event", "conn", "peer", "message", "exc", "logger"})
# Values whose text is str(value), as ``_text_fields`` writes them (the exact types: a
# subclass may format itself otherwise).
_SCALARS = frozenset({str, int, float, bool, type(None)})
_LEVELS = {level: f"{level.upper():7}" for level in ("debug", "info", "warning", "error")}


def format_record(record: dict[str, Any], *, json_lines: bool) -> str:
    """One log line (with its newline) for an event's or a log record's fields: JSON, or
    text. Consumes ``record`` (the text format pops the fields it places)."""
    if json_lines:
        return _JSON.encode(record) + "\n"
    name = record.pop("event")
    if name == "log":  # a logging record: "<ts> <LEVEL> <logger>: <message>"
        name = record.pop("logger") + ":"
    head = f"{record.pop('ts')} {record.pop('level').upper():7} {name}"
    message = record.pop("message", None)
    exc = record.pop("exc", None)
    parts = [head] + [f"{k}={v}" for key, value in record.items() for k, v in _text_fields(key, value)]
    if message is not None:
        parts.append(str(message))
    line = " ".join(parts)
    return line + ("\n" + exc if exc else "") + "\n"


def format_event(event: Event, *, json_lines: bool, extra: Mapping[str, Any] | None = None) -> str:
    """``event``'s line, with ``extra`` fields after its own (a worker's ``worker``):
    the same text as ``format_record`` of its dict updated with ``extra``."""
    data = event.data
    if (
        event.name == "log"
        or (data and not _PLACED.isdisjoint(data))
        or (extra and not (_PLACED.isdisjoint(extra) and data.keys().isdisjoint(extra)))
    ):
        return _long_way(event, extra, json_lines)
    if json_lines:
        try:
            return _json_line(event, extra)
        except (KeyError, TypeError):  # a field that is not a str, int, float, bool or None
            return _long_way(event, extra, json_lines)
    level = _LEVELS.get(event.level) or f"{event.level.upper():7}"
    parts = [f"{iso_utc(event.at)} {level} {event.name}"]
    if event.conn_id is not None:
        parts.append(f"conn={event.conn_id}")
    if event.peer is not None:
        parts.append(f"peer={event.peer}")
    if data:
        _add_fields(parts, data)
    if extra:
        _add_fields(parts, extra)
    return " ".join(parts) + "\n"


def _long_way(event: Event, extra: Mapping[str, Any] | None, json_lines: bool) -> str:
    record = event.as_dict()
    if extra:
        record.update(extra)
    return format_record(record, json_lines=json_lines)


def _json_line(event: Event, extra: Mapping[str, Any] | None) -> str:
    """The JSON line of an event whose fields are all scalars, written as the encoder
    would (ASCII, compact separators) but without the dict and the encoder's set-up.
    KeyError or TypeError for any other field (a key or value of another type)."""
    parts = [f'{{"ts":"{iso_utc(event.at)}","level":{_string(event.level)},"event":{_string(event.name)}']
    if event.conn_id is not None:
        parts.append(f',"conn":{_JSON_SCALARS[type(event.conn_id)](event.conn_id)}')
    if event.peer is not None:
        parts.append(f',"peer":{_string(event.peer)}')
    for fields in (event.data, extra):
        if fields:
            for key, value in fields.items():
                parts.append(f",{_string(key)}:{_JSON_SCALARS[type(value)](value)}")
    parts.append("}\n")
    return "".join(parts)


def _json_float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (_INFINITY, -_INFINITY):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


_INFINITY = float("inf")
_string = json.encoder.encode_basestring_ascii  # what the encoder writes a str as (ensure_ascii)
_JSON_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _string,
    int: int.__repr__,
    float: _json_float,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
}


def _add_fields(parts: list[str], fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if type(value) in _SCALARS:
            parts.append(f"{key}={value}")
        else:
            parts.extend(f"{k}={v}" for k, v in _text_fields(key, value))


def _text_fields(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """``key=value`` pairs for the text format: a mapping (or a list of them, as the
    supervisor's ``workers``) is flattened into dotted keys, ``listeners.tcp.accepted=4``,
    so a line never carries a Python repr; an empty one is ``key=-``."""
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)) and any(isinstance(item, Mapping) for item in value):
        items = enumerate(value)
    else:
        yield key, str(value)
        return
    empty = True
    for inner_key, inner in items:
        empty = False
        yield from _text_fields(f"{key}.{inner_key}", inner)
    if empty:
        yield key, "-"
