"""Locust load test for the TCP echo service.

    locust -f loadtest/locustfile.py --host tcp://127.0.0.1:7007            # web UI on :8089
    locust -f loadtest/locustfile.py --host 127.0.0.1:7007 --headless -t 30s --csv out

Locust is HTTP-first; this follows its documented contract for other protocols: each
simulated user keeps one persistent TCP connection (reconnecting after a failure) and,
for every echo, fires ``environment.events.request`` with request_type "TCP", a name
per message size, the response time in ms (``time.perf_counter``), the response length,
and an exception on timeout, reset, short echo or mismatch. The whole echo is read and
compared byte for byte (EchoClient.echo), never a single recv.

A server run with ``--banner`` sends a line first on each connection: ``--echo-banner``
skips it, ``--echo-expect-banner REGEX`` also checks it (client.dial reads it). Without
them, the first echo fails with a message that says to pass ``--echo-banner``.

Pass/fail (the ``quitting`` listener) counts echoes, not connects (a user reconnects
after every failed echo, and each reconnect is a request too): no echoes, any failed
echo or connect, or an echo p95 above ``--echo-max-p95-ms`` makes the process exit 1; a
headless run ends with one verdict line on stdout, ``PASS: ...`` or ``FAIL: <reason>``.

The web UI labels a custom option by its ``dest`` (camel-cased, split before capitals
and digits: ``echo_max_p95_ms`` showed as "Echo Max P9 5Ms"), so every ``dest`` here is
words without digits; the flags and locust.conf keys are unchanged.

The ``--echo-*`` options are registered on ``init_command_line_parser`` directly on
the parser with ``include_in_web_ui=True`` (options added to an argument group skip
Locust's add_argument and never reach the web UI's form). Locust answers ``--help``
before it imports a locustfile (locustio/locust#2917), so ``locust -f ... --help``
cannot list them; ``python3 loadtest/locustfile.py --help`` prints Locust's help with
them. Defaults live in loadtest/locust.conf, which this file registers as a config
file (a ./locust.conf or ~/.locust.conf, flags and LOCUST_* variables still win).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs; comes with locust
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import RequestStats, StatsEntry

try:
    from client.dial import DialOptions
    from client.library import BannerError, EchoClient, EchoError, UnexpectedBanner
except ImportError:  # run from a checkout without `pip install .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from client.dial import DialOptions
    from client.library import BannerError, EchoClient, EchoError, UnexpectedBanner

log = logging.getLogger("echo.locust")
CONFIG_FILE = str(Path(__file__).resolve().with_name("locust.conf"))


class TargetError(ValueError):
    pass


def parse_target(host: str | None) -> tuple[str, int]:
    """``tcp://HOST:PORT`` or ``HOST:PORT`` (IPv6 in brackets) -> (host, port)."""
    text = (host or "").strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    name, sep, port_text = text.rpartition(":")
    name = name.strip("[]")
    if not sep or not name or "/" in text or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f"--host {host!r} is not tcp://HOST:PORT or HOST:PORT (port 1-65535)")
    return name, int(port_text)


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    # Locust reads ./locust.conf only; put ours first so that file, ~/.locust.conf and
    # flags still override it. (_default_config_files is configargparse's own list.)
    files = list(getattr(parser, "_default_config_files", []))
    if CONFIG_FILE not in files:
        parser._default_config_files = [CONFIG_FILE, *files]
    # On the parser itself, not an argument group: only the parser's add_argument
    # understands include_in_web_ui (an argument group's options are left out of the UI).
    for flag, dest, kind, default, text in ECHO_OPTIONS:
        if kind is bool:
            parser.add_argument(flag, dest=dest, action="store_true", help=text, include_in_web_ui=True)
        else:
            parser.add_argument(flag, dest=dest, type=kind, default=default, help=text, include_in_web_ui=True)


# flag, dest (the web UI's label: words, no digits), type, default, help
ECHO_OPTIONS: tuple[tuple[str, str, type, object, str], ...] = (
    ("--echo-small-bytes", "echo_small_bytes", int, 64, "TCP echo: size of the small message, weight 9 (64)"),
    ("--echo-large-bytes", "echo_large_bytes", int, 16384, "TCP echo: size of the large message, weight 1 (16384)"),
    ("--echo-connect-timeout", "echo_connect_timeout", float, 5.0, "TCP echo: seconds to connect (5)"),
    (
        "--echo-read-timeout",
        "echo_read_timeout",
        float,
        5.0,
        "TCP echo: seconds without echo before a request fails (5)",
    ),
    ("--echo-think-time", "echo_think_time", float, 0.05, "TCP echo: seconds each user waits between echoes (0.05)"),
    (
        "--echo-max-p95-ms",
        "echo_response_time_limit",
        float,
        500.0,
        "TCP echo pass/fail: fail the run if the 95th percentile echo time is above this many milliseconds (500)",
    ),
    (
        "--echo-banner",
        "echo_banner",
        bool,
        False,
        "TCP echo: the server sends a line first (echo-server --banner): skip it before echoing (off)",
    ),
    (
        "--echo-expect-banner",
        "echo_expect_banner",
        str,
        "",
        "TCP echo: fail a connection whose banner line has no match for this regular expression "
        "(implies --echo-banner; empty: no check)",
    ),
)
BANNER_FLAGS = ("--echo-banner", "--echo-expect-banner")


@events.init.add_listener
def check_target(environment: Environment, web_ui: Any = None, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        # With --master-bind-port 0 the OS picks the port: say which, for the workers.
        log.info("master listening for workers on port %d", environment.runner.server.port)
    if web_ui is not None:
        gevent.spawn(_announce_web_port, web_ui)
    options = environment.parsed_options
    pattern = options.echo_expect_banner if options else ""
    try:
        re.compile(pattern or "")
    except re.error as error:
        print(f"locustfile: --echo-expect-banner: not a regular expression: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(environment.runner, WorkerRunner) or not environment.host:
        return  # workers get the target from the master
    try:
        parse_target(environment.host)
    except TargetError as error:
        print(f"locustfile: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _announce_web_port(web_ui: Any) -> None:
    """With --web-port 0 the OS picks the port: say which. ``gevent.idle`` returns once
    every runnable greenlet has run, the web UI's ``start_server`` (bind, listen) among them."""
    gevent.idle()
    server = getattr(web_ui, "server", None)
    if server is not None and getattr(server, "socket", None) is not None:  # bound and listening
        log.info("web UI listening on port %d", server.server_port)


@events.quitting.add_listener
def apply_thresholds(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    limit_ms = options.echo_response_time_limit if options else 500.0
    echoes = echo_totals(environment.stats)
    connects = environment.stats.entries.get(("connect", "TCP"))
    connect_failures = connects.num_failures if connects else 0
    p95 = echoes.get_response_time_percentile(0.95) or 0
    if echoes.num_requests == 0:
        problem = "no echoes were made" + (f" ({connect_failures} connects failed)" if connect_failures else "")
    elif echoes.num_failures > 0:
        problem = f"{echoes.num_failures} of {echoes.num_requests} echoes failed ({echoes.fail_ratio:.2%})"
    elif connect_failures:
        problem = f"{connect_failures} of {connects.num_requests if connects else 0} connects failed"
    elif p95 > limit_ms:
        problem = f"p95 echo time {p95:.0f} ms is above --echo-max-p95-ms {limit_ms:g}"
    else:
        problem = ""
    if problem:
        log.error("load test FAILED: %s", problem)
        environment.process_exit_code = 1
    if options is not None and options.headless:
        verdict = (
            f"FAIL: {problem}"
            if problem
            else f"PASS: {echoes.num_requests} echoes, 0 failures, p95 {p95:.0f} ms <= {limit_ms:g} ms"
        )
        # The last line of a CI run, on stdout whatever the log level: Locust prints its
        # summary tables after this event, so the verdict waits for the process's exit.
        atexit.register(print, verdict, flush=True)


def echo_totals(stats: RequestStats) -> StatsEntry:
    """Every echo request together (all sizes), without the connects."""
    total = StatsEntry(stats, "echoes", "TCP")
    for (name, _), entry in stats.entries.items():
        if name.startswith("echo "):
            total.extend(entry)
    return total


def stable(error: EchoError) -> EchoError:
    """The error as Locust should group it: banner messages quote the line, which holds
    the connection's own address, and would make one failure row per connection."""
    flag, expect_flag = BANNER_FLAGS
    if isinstance(error, UnexpectedBanner):
        return UnexpectedBanner(
            f"the echo began with a line of the server's own (a banner, echo-server --banner): "
            f"pass {flag} to skip it (or {expect_flag} REGEX to check it)",
            error.offset,
            error.line,
        )
    if isinstance(error, BannerError) and str(error).startswith("the banner line "):
        return BannerError(f"the banner line does not match {expect_flag}")
    return error


class EchoUser(User):
    """One persistent connection per user; small and large echoes, weighted 9:1."""

    host = "tcp://127.0.0.1:7007"

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        return float(options.echo_think_time) if options else 0.05

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.small = os.urandom(options.echo_small_bytes if options else 64)
        self.large = os.urandom(options.echo_large_bytes if options else 16384)
        self.connect_timeout = options.echo_connect_timeout if options else 5.0
        self.read_timeout = options.echo_read_timeout if options else 5.0
        self.dial = DialOptions(
            banner=bool(options and options.echo_banner),
            expect_banner=(options.echo_expect_banner or None) if options else None,
            banner_flags=BANNER_FLAGS,
        )
        self.client: EchoClient | None = None

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()

    @task(9)
    def echo_small(self) -> None:
        self._echo(self.small)

    @task(1)
    def echo_large(self) -> None:
        self._echo(self.large)

    def _connected(self) -> EchoClient:
        if self.client is None:
            host, port = parse_target(self.host)
            client = EchoClient(host, port, timeout=self.connect_timeout, options=self.dial)
            started = time.perf_counter()
            try:
                client.connect()
            except EchoError as error:
                self._report("connect", started, 0, stable(error))
                raise
            self._report("connect", started, 0, None)
            client.timeout = self.read_timeout
            client.sock.settimeout(self.read_timeout)
            self.client = client
        return self.client

    def _echo(self, payload: bytes) -> None:
        try:
            client = self._connected()
        except (EchoError, TargetError):
            return  # already reported; the next task tries again
        started = time.perf_counter()
        try:
            client.echo(payload)
        except EchoError as error:
            client.close()
            self.client = None  # reconnect on the next task
            self._report(f"echo {len(payload)}B", started, 0, stable(error))
            return
        self._report(f"echo {len(payload)}B", started, len(payload), None)

    def _report(self, name: str, started: float, length: int, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="TCP",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )


if __name__ == "__main__":
    # `python3 loadtest/locustfile.py --help`: Locust's help with this file's options,
    # which `locust -f loadtest/locustfile.py --help` cannot show (it answers --help
    # before importing the locustfile). Anything else: use the locust command.
    from locust.argument_parser import get_parser

    if not {"-h", "--help"} & set(sys.argv[1:]):
        print("usage: python3 loadtest/locustfile.py --help (to run: locust -f loadtest/locustfile.py ...)")
        raise SystemExit(2)
    get_parser().parse_args(["--help"])
