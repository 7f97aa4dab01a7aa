"""What a setting's text may be: the parsers and checks that config.py declares its
settings with.

A parser turns text (a flag or an environment variable) into a value, or raises
ValueError with a message fit to show after the setting's name. A check takes a value
and returns what is wrong with it, or None. Pure functions: any thread may call them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.faults.rules import Rule


# --- Parsers: text (from a flag or the environment) -> value. They raise ValueError
# with a message fit to show a user after the setting's name.


def integer(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def text(text: str) -> str:
    return text.strip()


def optional_text(text: str) -> str | None:
    return text.strip() or None


def fault_rules(text: str) -> tuple[Rule, ...]:
    """ECHO_FAULTS_RULES: a JSON list of rule objects (server/faults/rules.py)."""
    from server.faults.rules import FaultRuleError, rules_from_json_text  # only when a rule is given

    try:
        return rules_from_json_text(text)
    except FaultRuleError as error:
        raise ValueError(str(error)) from None


def fault_rule(text: str) -> Rule:
    """One --fault KIND[:key=value,...]."""
    from server.faults.rules import FaultRuleError, parse_flag

    try:
        return parse_flag(text)
    except FaultRuleError as error:
        raise ValueError(f"{text.strip()!r}: {error}") from None


def optional_integer(text: str) -> int | None:
    return None if not text.strip() else integer(text)


def admin_port(text: str) -> int | None:
    """``off`` or a negative number disables the admin endpoint (None)."""
    if text.strip().lower() in ("off", "none", "disabled", ""):
        return None
    port = integer(text)
    return None if port < 0 else port


def workers(text: str) -> int:
    """A number, or ``auto``: the CPUs this process may run on (its affinity mask)."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return integer(text)


# --- Checks: value -> problem (str) or None when the value is valid.


def between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value:g}"
        return None

    return check


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {value!r}"
        return None

    return check


def port_or_off(value: Any) -> str | None:
    return None if value is None else between(0, 65535)(value)


def nonempty(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must not be empty"


def always_valid(value: Any) -> str | None:
    return None


def seed(value: Any) -> str | None:
    return None if value is None else between(0, 2**63)(value)


def rules(value: Any) -> str | None:
    if value is None:
        return None
    from server.faults.rules import Rule

    if isinstance(value, tuple) and all(isinstance(rule, Rule) for rule in value):
        return None
    return "expected fault rules"
