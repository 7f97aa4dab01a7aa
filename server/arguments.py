"""echo-server's arguments: argv + environment -> Config, with one-line errors.

Every setting is a flag and an ``ECHO_*`` environment variable, built from
config.SETTINGS; a flag wins over the environment. Used by the CLI (cli.py) and by the
health check, which reads a running server's own flags with the server's parser.
Pure functions; any thread may call them.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from server import __version__
from server.config import ENV_PREFIX, SETTINGS, Config, ConfigError, env_name, flag_name, parse_value, parse_values

PROG = "echo-server"


class UsageError(Exception):
    """Bad command line or environment; the message names the setting."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="TCP echo service (RFC 862): every byte sent comes back, in order.",
        epilog="Each setting can also be given as the environment variable shown; a flag wins. "
        "Subcommands: 'healthcheck [--admin-port N]' probes a running server's admin endpoint; "
        "'analyze FILE...' summarizes JSON logs (rotated .gz too).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for spec in SETTINGS:
        unit = spec.metadata["unit"]
        default = "off" if spec.default is None and spec.name == "admin_port" else spec.default
        shown = f"{default}{' ' + unit if unit else ''}" if default is not None else "unset"
        parser.add_argument(
            flag_name(spec.name),
            dest=spec.name,
            metavar=spec.metadata["metavar"] or None,
            default=None,
            action="append" if spec.metadata["parse_each"] else "store",
            help=f"{spec.metadata['help']} [env {env_name(spec.name)}; default {shown}]",
        )
    return parser


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Build the Config; raises UsageError naming the flag or variable at fault."""
    return load_with_sources(argv, environ)[0]


def load_with_sources(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Config, dict[str, str]]:
    """The Config, and for each setting given, the flag or variable it came from."""
    args = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        for source, text in (
            (env_name(spec.name), environ.get(env_name(spec.name))),
            (flag_name(spec.name), getattr(args, spec.name)),
        ):
            if text is None:
                continue
            try:
                if isinstance(text, list):  # a repeatable flag (--fault)
                    values[spec.name] = parse_values(spec.name, text)
                else:
                    values[spec.name] = parse_value(spec.name, text)
            except ConfigError as error:
                raise UsageError(f"{source}: {error.problem}") from None
            sources[spec.name] = source
    try:
        return Config(**values), sources
    except ConfigError as error:
        raise UsageError(f"{sources.get(error.setting, flag_name(error.setting))}: {error.problem}") from None


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """One warning per ECHO_* variable that is no setting (a typo is otherwise silent)."""
    known = [env_name(spec.name) for spec in SETTINGS]
    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"ignoring environment variable {name}: no such setting{hint}")
    return warnings
