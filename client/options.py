"""Option types shared by ``echo-client rate``, ``watch`` and ``merge``: durations with
units (``50ms``, ``10s``, ``5m``), rates, fractions. Each raises
argparse.ArgumentTypeError with the text the user typed, so the usage error names the
flag (client.cli's parser turns it into one line and exit 2). Pure functions."""

from __future__ import annotations

import argparse
import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|ms|s|m|h)?")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_DURATION_S = 7 * 24 * 3600.0  # a week: every limit finite


def duration(text: str, *, zero_ok: bool = False) -> float:
    """Seconds from ``250ms``, ``2s``, ``1.5m``, ``1h`` or a bare number of seconds."""
    found = _DURATION.fullmatch(text.strip())
    value = float(found.group(1)) * _UNIT_S[found.group(2)] if found else -1.0
    if not (value >= 0 if zero_ok else value > 0) or value > MAX_DURATION_S:
        bound = ">= 0" if zero_ok else "> 0"
        raise argparse.ArgumentTypeError(
            f"expected a duration {bound} and <= 1 week such as 500ms, 10s, 5m; got {text!r}"
        )
    return value


def positive_duration(text: str) -> float:
    return duration(text)


def non_negative_duration(text: str) -> float:
    return duration(text, zero_ok=True)


def positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"expected messages per second > 0 (at most 10,000,000), got {text!r}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1 (0.001 = 0.1%), got {text!r}")
    return value
