"""The fault rule vocabulary: one table of keys, read from JSON or from ``--fault``.

    rule_from_json({"kind": "reset", "probability": 0.05})   # PUT /faults, ECHO_FAULTS_RULES
    parse_flag("delay:delay_ms=200,jitter_ms=50,from=127.0.0.2/32")  # --fault
    rules_from_json_text('[{"kind": "hang", "mode": "no_echo"}]')

A rule is ``kind`` (a behaviour) plus its targeting (``probability``, ``count``,
``from``, ``listener``, ``worker``) and the kind's parameters. Both spellings go through
the same table (``KEYS``), so a key means the same thing, has the same bounds and fails
with the same message whichever way it came; an unknown key, a key the kind does not
take, or a value out of bounds raises FaultRuleError with one line naming the key.
Scripts rely on these names: add to them, never change them.

Kinds:
    delay       delay_ms, jitter_ms, first_only   (TCP, TLS and UDP)
    bandwidth   bytes_per_s                       (TCP, TLS)
    close       after_bytes and/or after_s        (FIN; neither: at accept)
    reset       after_bytes and/or after_s        (RST; neither: at accept)
    hang        mode: no_read | no_echo
    refuse, unready, unhealthy   for_s            (listener/process states, not per connection)
    drop, reorder                                 (UDP datagrams)

Pure functions and frozen values: any thread may call anything here.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CONNECTION_KINDS = ("delay", "bandwidth", "close", "reset", "hang")
STATE_KINDS = ("refuse", "unready", "unhealthy")
DATAGRAM_KINDS = ("drop", "reorder")
KINDS = CONNECTION_KINDS + STATE_KINDS + DATAGRAM_KINDS
LISTENERS = ("tcp", "tls", "udp")
HANG_MODES = ("no_read", "no_echo")

MAX_RULES = 64  # a policy longer than this is a mistake, and each draw walks it
MAX_MS = 3_600_000.0  # delays and jitter: at most an hour
MAX_S = 86_400.0  # after_s and for_s: at most a day
MAX_BYTES_PER_S = 1e10
MAX_COUNT = 1_000_000_000
MAX_AFTER_BYTES = 1 << 62

# Which kinds take each targeting key (the parameters are listed per kind below).
_TARGETED = CONNECTION_KINDS + DATAGRAM_KINDS
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "delay": ("delay_ms", "jitter_ms", "first_only"),
    "bandwidth": ("bytes_per_s",),
    "close": ("after_bytes", "after_s"),
    "reset": ("after_bytes", "after_s"),
    "hang": ("mode",),
    "refuse": ("for_s",),
    "unready": ("for_s",),
    "unhealthy": ("for_s",),
    "drop": (),
    "reorder": (),
}
_REQUIRED: dict[str, tuple[str, ...]] = {"delay": ("delay_ms",), "bandwidth": ("bytes_per_s",)}
_REQUIRED.update({kind: ("for_s",) for kind in STATE_KINDS})


class FaultRuleError(ValueError):
    """A rule is malformed; the message is one line fit to show after where it came from."""


# --- the keys: how to read one from flag text, and how to check one from JSON ---------------


def _number(low: float, high: float, *, above: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FaultRuleError(f"expected a number, got {value!r}")
        if not low <= value <= high or (above and value == low):
            bound = f"above {low:g} and at most {high:g}" if above else f"between {low:g} and {high:g}"
            raise FaultRuleError(f"must be {bound}, got {value:g}")
        return float(value)

    return check


def _whole(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FaultRuleError(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise FaultRuleError(f"must be between {low} and {high}, got {value}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FaultRuleError(f"expected true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise FaultRuleError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _network(value: Any) -> Network:
    if not isinstance(value, str):
        raise FaultRuleError(f"expected a CIDR such as 127.0.0.2/32, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise FaultRuleError(f"expected a CIDR such as 127.0.0.2/32, got {value!r}") from None


def _read_number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # the check says what was expected


def _read_whole(text: str) -> Any:
    try:
        return int(text, 10)
    except ValueError:
        return text


def _read_flag(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    return text


def _read_text(text: str) -> Any:
    return text


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the vocabulary: its field on Rule, its check, how flag text reads."""

    field: str
    check: Callable[[Any], Any]
    read: Callable[[str], Any]


KEYS: dict[str, Key] = {
    "probability": Key("probability", _number(0.0, 1.0), _read_number),
    "count": Key("count", _whole(1, MAX_COUNT), _read_whole),
    "from": Key("source", _network, _read_text),
    "listener": Key("listener", _choice(*LISTENERS), _read_text),
    "worker": Key("worker", _whole(0, 1023), _read_whole),  # the ``worker`` label of events: from 0
    "delay_ms": Key("delay_ms", _number(0.0, MAX_MS), _read_number),
    "jitter_ms": Key("jitter_ms", _number(0.0, MAX_MS), _read_number),
    "first_only": Key("first_only", _flag, _read_flag),
    "bytes_per_s": Key("bytes_per_s", _number(0.0, MAX_BYTES_PER_S, above=True), _read_number),
    "after_bytes": Key("after_bytes", _whole(0, MAX_AFTER_BYTES), _read_whole),
    "after_s": Key("after_s", _number(0.0, MAX_S), _read_number),
    "mode": Key("mode", _choice(*HANG_MODES), _read_text),
    "for_s": Key("for_s", _number(0.0, MAX_S, above=True), _read_number),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. ``source`` is the ``from`` key (a Python keyword)."""

    kind: str
    probability: float = 1.0
    count: int | None = None
    source: Network | None = None
    listener: str | None = None
    worker: int | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    first_only: bool = False
    bytes_per_s: float = 0.0
    after_bytes: int | None = None
    after_s: float | None = None
    mode: str = "no_read"
    for_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The rule as the JSON object that would make it (defaults left out)."""
        document: dict[str, Any] = {"kind": self.kind}
        for name, key in KEYS.items():
            value = getattr(self, key.field)
            if value != _DEFAULTS[key.field]:
                document[name] = str(value) if name == "from" else _plain(value)
        return document

    def to_flag(self) -> str:
        """The rule as --fault would give it: ``reset:probability=0.5,from=127.0.0.2/32``."""
        document = self.to_json()
        del document["kind"]
        shown = ",".join(f"{key}={_flag_text(value)}" for key, value in document.items())
        return f"{self.kind}:{shown}" if shown else self.kind

    def targets(self, listener: str) -> bool:
        """Does this rule apply to connections (or datagrams) on ``listener``?"""
        if self.kind in STATE_KINDS:
            return False
        if self.listener is not None:
            return self.listener == listener
        if self.kind in DATAGRAM_KINDS:
            return listener == "udp"
        if self.kind == "delay":
            return True
        return listener != "udp"


_DEFAULTS: dict[str, Any] = {spec.name: spec.default for spec in fields(Rule)}


def _flag_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _plain(value: Any) -> Any:
    """3.0 -> 3 in JSON, so a rule reads back as it was written."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def rule_from_json(document: Any) -> Rule:
    """A Rule from a JSON object; FaultRuleError says which key is wrong and why."""
    if not isinstance(document, Mapping):
        raise FaultRuleError(f"a rule is a JSON object with a 'kind', got {type(document).__name__}")
    kind = document.get("kind")
    if kind not in KINDS:
        shown = "no kind" if kind is None else f"unknown kind {kind!r}"
        raise FaultRuleError(f"{shown}; expected one of {', '.join(KINDS)}")
    allowed = set(_PARAMETERS[kind])
    if kind in _TARGETED:
        allowed |= {"probability", "count", "from", "listener", "worker"}
    elif kind == "refuse":
        allowed |= {"listener"}
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name == "kind":
            continue
        key = KEYS.get(name)
        if key is None:
            raise FaultRuleError(f"unknown key {name!r} (keys: kind, {', '.join(KEYS)})")
        if name not in allowed:
            raise FaultRuleError(f"{kind} takes no {name!r} (it takes {', '.join(sorted(allowed)) or 'nothing'})")
        try:
            values[key.field] = key.check(value)
        except FaultRuleError as error:
            raise FaultRuleError(f"{name}: {error}") from None
    for name in _REQUIRED.get(kind, ()):
        if name not in document:
            raise FaultRuleError(f"{kind} needs {name!r}")
    rule = Rule(kind=str(kind), **values)
    _check_listener(rule)
    return rule


def _check_listener(rule: Rule) -> None:
    if rule.listener == "udp" and rule.kind not in (*DATAGRAM_KINDS, "delay"):
        raise FaultRuleError(f"listener: {rule.kind} is for TCP and TLS connections, not 'udp'")
    if rule.listener in ("tcp", "tls") and rule.kind in DATAGRAM_KINDS:
        raise FaultRuleError(f"listener: {rule.kind} is for UDP datagrams, not {rule.listener!r}")


def parse_flag(text: str) -> Rule:
    """``KIND[:key=value,...]`` (the --fault syntax) -> Rule; FaultRuleError if malformed."""
    kind, _, rest = text.strip().partition(":")
    document: dict[str, Any] = {"kind": kind.strip()}
    if rest.strip():
        for item in rest.split(","):
            name, equals, value = item.partition("=")
            name = name.strip()
            if not equals or not name:
                raise FaultRuleError(f"expected key=value, got {item.strip()!r}")
            if name in document:
                raise FaultRuleError(f"{name!r} given twice")
            key = KEYS.get(name)
            document[name] = key.read(value.strip()) if key is not None else value
    return rule_from_json(document)


def rules_from_json(document: Any) -> tuple[Rule, ...]:
    """A policy from a JSON list of rule objects; the error names the rule by position."""
    if not isinstance(document, list):
        raise FaultRuleError(f"expected a JSON list of rules, got {type(document).__name__}")
    if len(document) > MAX_RULES:
        raise FaultRuleError(f"at most {MAX_RULES} rules, got {len(document)}")
    rules = []
    for position, item in enumerate(document, 1):
        try:
            rules.append(rule_from_json(item))
        except FaultRuleError as error:
            raise FaultRuleError(f"rule {position}: {error}") from None
    return tuple(rules)


def rules_from_json_text(text: str) -> tuple[Rule, ...]:
    """A policy from JSON text (ECHO_FAULTS_RULES, a PUT /faults body)."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise FaultRuleError(f"not JSON: {error}") from None
    except RecursionError:
        raise FaultRuleError("not JSON: nested too deeply") from None
    return rules_from_json(document)
