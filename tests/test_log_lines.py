"""Log lines: the short way (format_event) writes exactly what the long way writes."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from server.observe.events import Event, event, iso_utc
from server.observe.lines import format_event, format_record

# Every kind of value a field may hold, the awkward ones included.
VALUES: list[Any] = [
    "eof",
    "",
    "127.0.0.1:5000",
    "[::1]:5000",
    'quote " and backslash \\',
    "newline \n tab \t bell \x07",
    "é ü 漢字 \U0001f600",
    "\ud800",  # a lone surrogate: the JSON encoder escapes it, the text sink replaces it
    0,
    -7,
    12345678901234567890,
    True,
    False,
    None,
    0.000321,
    1e-7,
    -0.0,
    1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    {"tcp": {"accepted": 4, "bytes_received": 16}, "udp": {}},
    {},
    [{"index": 0, "pid": 12}, {"index": 1, "pid": 13}],
    [],
    [1, 2, 3],
    (1, "two"),
    b"bytes",
    object,
]
KEYS = ["reason", "bytes_in", "duration_s", "listener", "detail", "via", "x.y", "clé", 'q"uote']
PLACED = ["ts", "level", "event", "conn", "peer", "message", "exc", "logger", "worker"]


def long_way(record: Event, extra: Mapping[str, Any] | None, json_lines: bool) -> str:
    fields = record.as_dict()
    if extra:
        fields.update(extra)
    return format_record(fields, json_lines=json_lines)


def outcome(write: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The line, or the exception that writing it raised (the long way raises for an
    event named ``log`` without a ``logger``: the short way must do the same)."""
    try:
        return "line", write(*args, **kwargs)
    except Exception as error:
        return "raised", type(error).__name__


def random_event(rng: random.Random) -> tuple[Event, dict[str, Any] | None]:
    keys = KEYS + PLACED if rng.random() < 0.2 else KEYS
    data = {rng.choice(keys): rng.choice(VALUES) for _ in range(rng.randrange(0, 6))}
    if rng.random() < 0.05:
        data[7] = "a key that is not a str"  # type: ignore[index]
    record = Event(
        rng.choice(["opened", "closed", "rejected", "stats", "log", "weird name é"]),
        rng.choice(["debug", "info", "warning", "error", "custom"]),
        rng.choice([None, 0, 1, 123456]),
        rng.choice([None, "127.0.0.1:5000", "[::1]:1", 'odd"peer']),
        MappingProxyType(data),
        rng.choice([0.0, 1.5, time.time(), 1_700_000_000.999, 1_700_000_001.0005]),
    )
    extra = rng.choice([None, {}, {"worker": rng.choice([0, 3, "w", {"a": 1}])}, {"peer": "x"}, {"reason": 1}])
    return record, extra


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_format_event_writes_what_format_record_writes(json_lines: bool) -> None:
    rng = random.Random(25)
    for _ in range(20_000):
        record, extra = random_event(rng)
        short = outcome(format_event, record, json_lines=json_lines, extra=extra)
        assert short == outcome(long_way, record, extra, json_lines), record


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_every_pair_of_values_formats_alike(json_lines: bool) -> None:
    for first, second in itertools.product(VALUES, repeat=2):
        record = event("closed", conn_id=9, peer="127.0.0.1:1", reason=first, bytes_in=second)
        assert format_event(record, json_lines=json_lines) == long_way(record, None, json_lines)


def test_the_connection_lines_look_as_documented() -> None:
    at = 1_764_900_000.25  # 2025-12-05T02:00:00.250Z
    opened = Event("opened", conn_id=7, peer="127.0.0.1:5000", at=at)
    fields = {"reason": "eof", "bytes_in": 16, "bytes_out": 16, "duration_s": 0.0003}
    closed = Event("closed", conn_id=7, peer="127.0.0.1:5000", data=MappingProxyType(fields), at=at)
    assert format_event(opened, json_lines=False) == (
        "2025-12-05T02:00:00.250Z INFO    opened conn=7 peer=127.0.0.1:5000\n"
    )
    assert format_event(closed, json_lines=False, extra={"worker": 1}) == (
        "2025-12-05T02:00:00.250Z INFO    closed conn=7 peer=127.0.0.1:5000 reason=eof bytes_in=16 bytes_out=16"
        " duration_s=0.0003 worker=1\n"
    )
    line = format_event(closed, json_lines=True)
    assert line.endswith("}\n") and "\n" not in line[:-1]
    assert list(json.loads(line).items()) == [
        ("ts", "2025-12-05T02:00:00.250Z"),
        ("level", "info"),
        ("event", "closed"),
        ("conn", 7),
        ("peer", "127.0.0.1:5000"),
        ("reason", "eof"),
        ("bytes_in", 16),
        ("bytes_out", 16),
        ("duration_s", 0.0003),
    ]


def test_iso_utc_is_right_across_seconds_in_any_order() -> None:
    rng = random.Random(7)
    moments = [rng.uniform(0, 4_000_000_000) for _ in range(200)]
    moments += [1_700_000_000 + step / 4 for step in range(40)]  # the same second again and again, then the next
    moments += [1_700_000_000.999, 1_699_999_999.5, 1_700_000_000.0]  # back and forth
    for at in moments:
        seconds = int(at)
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((at - seconds) * 1000):03d}Z"
        assert iso_utc(at) == expected
