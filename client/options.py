"""Option types shared by ``echo-client rate``, ``watch`` and ``merge``: durations with
units (``50ms``, ``10s``, ``5m``), bounded whole numbers, rates, fractions. Each raises
argparse.ArgumentTypeError with the text the user typed, so the usage error names the
flag (client.cli's parser turns it into one line and exit 2). Pure functions."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence

from client.cli import PROG, _add_target, _Parser, _resolve_target

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


def whole_number(low: int, high: int, what: str) -> Callable[[str], int]:
    """An option type: a whole number from ``low`` to ``high``, named ``what`` in errors."""

    def parse(text: str) -> int:
        value = int(text) if text.isascii() and text.isdigit() else low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {text!r}")
        return value

    return parse


def target_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of a mode that takes the server as HOST PORT operands (and --timeout)."""
    parser = _Parser(
        prog=f"{PROG} {command}", usage=f"{PROG} {command} [options] [HOST] [PORT]", description=description
    )
    _add_target(parser, "[HOST] [PORT]")
    return parser


def parse_with_target(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> argparse.Namespace:
    """Options and HOST PORT operands in any order, as every echo-client mode takes them;
    client.cli.UsageError (one line naming the setting) otherwise."""
    args = parser.parse_intermixed_args(list(argv))
    _resolve_target(command, args)
    return args


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
