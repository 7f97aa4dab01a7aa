"""``python3 -m server healthcheck``: exit 0 if the running server answers within a
second, else 1 (2 for a bad argument). The container's HEALTHCHECK runs it (the image
has no curl), so it must find the server's ports with no arguments:

- each of ``--admin-port``, ``--admin-host``, ``--port`` and ``--host`` comes from, in
  order: this command's own flag; the server's command line, read from
  ``/proc/1/cmdline`` when PID 1 is ``python -m server`` or ``echo-server`` (it is, in
  the container: so ``docker run IMAGE --admin-port 9000`` is probed on 9000); the
  ``ECHO_*`` environment; the server's default.
- With the admin endpoint on, it asks ``/healthz`` for a 200.
- With it off (``--admin-port off``), it probes the echo port: connect, send one byte,
  read it back. That probe is a real (short) connection, so it shows in the server's
  counters and logs.

Everything here runs on the one thread of a short-lived process.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.config import Config, ConfigError, env_name, flag_name, parse_value

TIMEOUT_S = 1.0
SERVER_CMDLINE = Path("/proc/1/cmdline")
PROBED = ("admin_port", "admin_host", "port", "host")
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class Probe:
    kind: str  # "http": GET /healthz on the admin endpoint; "echo": one byte on the echo port
    host: str
    port: int


class ProbeError(Exception):
    """Nothing to probe; the message says why, ``exit_code`` is 2 for a bad value."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def server_arguments(cmdline: bytes) -> list[str] | None:
    """The flags of an echo-server command line (NUL-separated, as in /proc/PID/cmdline),
    or None if it is some other program (outside a container PID 1 is init)."""
    argv = [arg.decode(errors="replace") for arg in cmdline.split(b"\0")]
    if argv and argv[-1] == "":
        argv.pop()
    for index, arg in enumerate(argv):
        if arg == "-m" and argv[index + 1 : index + 2] == ["server"]:
            rest = argv[index + 2 :]
            return None if rest[:1] in (["healthcheck"], ["analyze"]) else rest
    if argv and os.path.basename(argv[0]) == "echo-server":
        return argv[1:]
    return None


def _from_server_cmdline(args: Sequence[str]) -> dict[str, str]:
    """The probed flags from the server's own argv, parsed by the server's own parser
    (so ``--port=1``, ``--port 1`` and abbreviations mean what they meant to it)."""
    from server.arguments import UsageError, build_parser

    try:
        parsed = build_parser().parse_args(list(args))
    except (UsageError, SystemExit):
        return {}  # the server would not have started with these: fall back
    return {name: value for name in PROBED if (value := getattr(parsed, name)) is not None}


def resolve(own: Mapping[str, str | None], server_args: Sequence[str] | None, environ: Mapping[str, str]) -> Probe:
    """Where to probe: see the module docstring for the order of sources."""
    from_cmdline = _from_server_cmdline(server_args) if server_args is not None else {}
    values: dict[str, object] = {}
    for name in PROBED:
        for source, text in (
            (flag_name(name), own.get(name)),
            (f"the server's {flag_name(name)}", from_cmdline.get(name)),
            (env_name(name), environ.get(env_name(name))),
        ):
            if text is None:
                continue
            try:
                values[name] = parse_value(name, text)
            except ConfigError as error:
                raise ProbeError(f"{source}: {error.problem}", 2) from None
            break
    defaults = Config()
    host = str(values.get("host", defaults.host))
    admin_port = values.get("admin_port", defaults.admin_port)
    if isinstance(admin_port, int):
        admin_host = str(values.get("admin_host") or host)
        return Probe("http", _WILDCARDS.get(admin_host, admin_host), admin_port)
    port = values.get("port", defaults.port)
    assert isinstance(port, int)
    if port == 0:
        raise ProbeError("the admin endpoint is off and the echo port is 0 (picked at start): nothing to probe", 1)
    return Probe("echo", _WILDCARDS.get(host, host), port)


def check_http(probe: Probe) -> str | None:
    """None if /healthz answered 200 in time, else what went wrong."""
    url = f"http://{probe.host}:{probe.port}/healthz"
    connection = http.client.HTTPConnection(probe.host, probe.port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        return f"{url}: {error}"
    finally:
        connection.close()
    return None if status == 200 else f"{url} answered {status}"


def check_echo(probe: Probe) -> str | None:
    """None if the echo port echoed one byte in time, else what went wrong."""
    where = f"echo port {probe.host}:{probe.port}"
    try:
        with socket.create_connection((probe.host, probe.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"\n")
            echoed = sock.recv(1)
            sock.shutdown(socket.SHUT_WR)
    except OSError as error:
        return f"{where}: {error}"
    return None if echoed == b"\n" else f"{where}: closed without echoing"


def main(argv: Sequence[str], environ: Mapping[str, str], cmdline_path: Path = SERVER_CMDLINE) -> int:
    parser = argparse.ArgumentParser(prog="echo-server healthcheck", description=__doc__)
    for name in PROBED:
        parser.add_argument(flag_name(name), dest=name, help=f"override the server's setting [env {env_name(name)}]")
    args = parser.parse_args(list(argv))
    try:
        cmdline = cmdline_path.read_bytes()
    except OSError:
        cmdline = b""  # no /proc, or not ours to read: the environment and defaults decide
    try:
        probe = resolve(vars(args), server_arguments(cmdline), environ)
    except ProbeError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return error.exit_code
    problem = check_http(probe) if probe.kind == "http" else check_echo(probe)
    if problem is not None:
        print(f"healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0
