"""Config: every setting of the server, in one frozen dataclass.

This module owns the list of settings: name, type, default, unit, help text and the
rule that makes a value valid (the parsers and checks those rules are made of are in
setting_values.py). The CLI flags (``--max-connections``), the environment
variables (``ECHO_MAX_CONNECTIONS``) and ``--help`` are built from the ``SETTINGS``
below; the README's configuration table is written by hand and a test checks it
against them, so none of them can drift apart unnoticed.

A Config is immutable and validated on construction: any thread may read one.
``Config(port=70000)`` raises ConfigError naming the setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server import setting_values as values
from server.engine.proxy_protocol import ACCEPT_CHOICES
from server.lib.alpn import check_alpn, parse_alpn
from server.lib.banner_template import check_template, parse_template
from server.lib.networks import check_networks

if TYPE_CHECKING:
    from server.faults.rules import Rule

ENV_PREFIX = "ECHO_"


class ConfigError(ValueError):
    """A setting has an invalid value. ``setting`` is the field name."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def is_loopback(host: str) -> bool:
    """Is ``host`` reachable from this machine only? (Names other than localhost: no.)"""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


DAY_S = 86_400.0
DEFAULT_ADMIN_PORT = 7008


def setting(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any],
    check: Callable[[Any], str | None],
    unit: str = "",
    metavar: str = "",
    parse_each: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field carrying what the CLI, env and docs need to know about it.
    ``parse_each``: the flag is repeatable, each one parsed by this into one item of a
    tuple (the environment variable still goes through ``parse``)."""
    meta = {"help": help, "parse": parse, "check": check, "unit": unit, "metavar": metavar, "parse_each": parse_each}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Config:
    # Loopback by default: a server started by hand is not reachable from the network
    # until someone asks for it. The container image sets ECHO_HOST=0.0.0.0.
    host: str = setting(
        "127.0.0.1",
        "address to listen on; '::' listens on IPv6 and IPv4 (dual-stack), 0.0.0.0 on all IPv4",
        parse=values.text,
        check=values.nonempty,
        metavar="ADDR",
    )
    port: int = setting(
        7007,
        "TCP port for echo; 0 picks a free port",
        parse=values.integer,
        check=values.between(0, 65535),
        metavar="PORT",
    )
    loops: int = setting(
        1,
        "scheduler threads running connections; under the GIL one is fastest",
        parse=values.integer,
        check=values.between(1, 64),
        metavar="N",
    )
    # One process is one core (the GIL); more cores take processes. 1: no supervisor.
    workers: int = setting(
        1,
        "worker processes sharing the port under a supervisor (restarts, SIGHUP reload); "
        "'auto' = the CPUs this process may use",
        parse=values.workers,
        check=values.between(1, 1024),
        metavar="N",
    )
    # Liveness (docs/workers.md). The scheduler turns at least once a second even when
    # idle, so 5 s without a turn is a loop stuck in code that never yields, not a quiet one.
    heartbeat_timeout: float = setting(
        5.0,
        "/healthz answers 503, naming the loop, when a scheduler has not turned for this long; 0 turns it off",
        parse=values.number,
        check=values.between(0, DAY_S),
        unit="s",
        metavar="SECONDS",
    )
    # Past /healthz's alarm, the supervisor acts: room for a GC pause or a swapped-in page.
    worker_timeout: float = setting(
        10.0,
        "with --workers: a worker whose loop has not turned (or that sent nothing) for this long "
        "is killed and replaced (worker_hung); 0 turns it off",
        parse=values.number,
        check=values.between(0, DAY_S),
        unit="s",
        metavar="SECONDS",
    )
    # Sized for bursts: a load balancer's health checks plus a load test's ramp-up can
    # open thousands of connections within one scheduler turn.
    backlog: int = setting(
        1024,
        "listen backlog (the kernel caps it at net.core.somaxconn)",
        parse=values.integer,
        check=values.between(1, 65535),
        metavar="N",
    )
    max_connections: int = setting(
        10_000,
        "connections open at once; more are accepted and closed at once (the soft RLIMIT_NOFILE is raised "
        "to fit; if the hard limit is too low, this is lowered to fit and a warning says so)",
        parse=values.integer,
        check=values.between(1, 1_000_000),
        metavar="N",
    )
    max_connections_per_ip: int = setting(
        1_000,
        "connections open at once from one client address; more are accepted and closed at once",
        parse=values.integer,
        check=values.between(1, 1_000_000),
        metavar="N",
    )
    idle_timeout: float = setting(
        300.0,
        "close a connection that sends nothing for this long",
        parse=values.number,
        check=values.between(0.001, DAY_S),
        unit="s",
        metavar="SECONDS",
    )
    write_stall_timeout: float = setting(
        30.0,
        "close a connection whose peer takes none of its echo for this long (a slow reader is kept)",
        parse=values.number,
        check=values.between(0.001, DAY_S),
        unit="s",
        metavar="SECONDS",
    )
    # TLS and UDP listeners: off unless a port is given; they bind ``host`` like TCP.
    tls_port: int | None = setting(
        None,
        "TCP port for echo over TLS (needs --tls-cert and --tls-key); 0 picks a free port; off by default",
        parse=values.admin_port,
        check=values.port_or_off,
        metavar="PORT",
    )
    tls_cert: str | None = setting(
        None,
        "PEM certificate chain for TLS, leaf first; re-read on SIGHUP",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="PATH",
    )
    tls_key: str | None = setting(
        None,
        "PEM private key of --tls-cert (unencrypted); re-read on SIGHUP",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="PATH",
    )
    tls_client_ca: str | None = setting(
        None,
        "PEM CA certificates: require TLS clients to present a certificate they signed (mTLS)",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="PATH",
    )
    tls_handshake_timeout: float = setting(
        10.0,
        "close a TLS connection whose handshake has not finished this long after it was accepted",
        parse=values.number,
        check=values.between(0.001, 3600),
        unit="s",
        metavar="SECONDS",
    )
    # Off by default: offering ALPN names a protocol the echo does not speak; it is for
    # seeing which protocol a client or a TLS passthrough route asks for (reflection).
    tls_alpn: str | None = setting(
        None,
        "ALPN protocols the TLS listener offers, most preferred first (NAME[,NAME...]); off by default",
        parse=parse_alpn,
        check=check_alpn,
        metavar="PROTOCOLS",
    )
    udp_port: int | None = setting(
        None,
        "UDP port for echo (one datagram back per datagram, rate-limited); 0 picks a free port; off by default",
        parse=values.admin_port,
        check=values.port_or_off,
        metavar="PORT",
    )
    # A UDP echo can be aimed at a victim by spoofing its address (reflection); these
    # bound what any one address, and everyone together, can get echoed to them.
    udp_rate: float = setting(
        100.0,
        "UDP datagrams per second echoed to one source address (bursts of as many); more are dropped",
        parse=values.number,
        check=values.between(0.001, 1_000_000),
        metavar="N",
    )
    udp_global_rate: float = setting(
        10_000.0,
        "UDP datagrams per second echoed in all (bursts of as many); more are dropped",
        parse=values.number,
        check=values.between(0.001, 10_000_000),
        metavar="N",
    )
    # Every byte read is echoed whatever this is; the drain only lets clients finish on
    # their own terms. Short enough to fit well inside docker stop's 10 s default.
    shutdown_timeout: float = setting(
        2.0,
        "on SIGTERM, keep echoing open connections this long before closing them",
        parse=values.number,
        check=values.between(0, 3600),
        unit="s",
        metavar="SECONDS",
    )
    buffer_size: int = setting(
        65_536,
        "receive buffer per scheduler; also the most echo a connection may owe (memory bound per slow reader)",
        parse=values.integer,
        check=values.between(1024, 16 * 1024 * 1024),
        unit="bytes",
        metavar="BYTES",
    )
    stats_interval: float = setting(
        60.0,
        "publish a stats event this often; 0 turns it off",
        parse=values.number,
        check=values.between(0, DAY_S),
        unit="s",
        metavar="SECONDS",
    )
    # Behind a load balancer (see server/engine/proxy_step.py and server/engine/banner.py). The
    # timeout is generous for a header that arrives in one segment with the connection. One
    # setting for every stream listener: a balancer that sends PROXY in front of a TLS
    # passthrough port sends it to the plain port too, and two settings could disagree.
    proxy_protocol: str = setting(
        "off",
        "each connection (TCP and TLS ports) must begin with a PROXY protocol header from a load balancer:"
        " off, v1, v2 or any",
        parse=lambda text: text.strip().lower(),
        check=values.one_of("off", *ACCEPT_CHOICES),
        metavar="VERSION",
    )
    proxy_protocol_timeout: float = setting(
        5.0,
        "close a connection whose PROXY header has not fully arrived within this long",
        parse=values.number,
        check=values.between(0.001, 3600),
        unit="s",
        metavar="SECONDS",
    )
    proxy_protocol_from: str = setting(
        "any",
        "source addresses allowed to send a PROXY header: any, or CIDR[,CIDR...]; others are closed",
        parse=values.text,
        check=check_networks,
        metavar="CIDRS",
    )
    banner: str | None = setting(
        None,
        "send this line first on each connection ({hostname} {peer} {local} {conn} {listener} {version});"
        " not pure RFC 862",
        parse=parse_template,
        check=check_template,
        metavar="TEMPLATE",
    )
    log_format: str = setting(
        "text",
        "log line format: text or json",
        parse=values.text,
        check=values.one_of("text", "json"),
        metavar="FORMAT",
    )
    log_level: str = setting(
        "info",
        "lowest level logged: debug, info, warning or error",
        parse=lambda text: text.strip().lower(),
        check=values.one_of("debug", "info", "warning", "error"),
        metavar="LEVEL",
    )
    log_file: str | None = setting(
        None,
        "write logs to this file (rotated, old files gzipped) instead of stdout",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="PATH",
    )
    log_max_bytes: int = setting(
        10 * 1024 * 1024,
        "rotate the log file when it would grow past this size",
        parse=values.integer,
        check=values.between(1024, 1 << 40),
        unit="bytes",
        metavar="BYTES",
    )
    log_backups: int = setting(
        5,
        "rotated log files to keep",
        parse=values.integer,
        check=values.between(0, 1000),
        metavar="N",
    )
    log_queue: int = setting(
        10_000,
        "log events waiting to be written; more are dropped and counted",
        parse=values.integer,
        check=values.between(1, 10_000_000),
        metavar="N",
    )
    admin_host: str | None = setting(
        None,
        "address of the admin HTTP endpoint (default: the echo host)",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="ADDR",
    )
    admin_port: int | None = setting(
        DEFAULT_ADMIN_PORT,
        "port of the admin HTTP endpoint; 0 picks a free port; 'off' or negative disables it",
        parse=values.admin_port,
        check=values.port_or_off,
        metavar="PORT",
    )

    # Faults on demand (server/faults/): off unless asked for. The rules are the policy at
    # start; the admin port's PUT /faults replaces it at runtime.
    faults: str = setting(
        "off",
        "on: fault rules may make connections misbehave on purpose (--fault, PUT /faults); see docs/faults.md",
        parse=lambda text: text.strip().lower(),
        check=values.one_of("on", "off"),
        metavar="on|off",
    )
    faults_rules: tuple[Rule, ...] | None = setting(
        None,
        "a fault rule at start, KIND[:key=value,...], repeatable (the environment variable: a JSON list of rules)",
        parse=values.fault_rules,
        check=values.rules,
        metavar="RULE",
        parse_each=values.fault_rule,
    )
    faults_seed: int | None = setting(
        None,
        "seed of the fault draws, for a run that repeats exactly; unset: a random seed",
        parse=values.optional_integer,
        check=values.seed,
        metavar="N",
    )
    admin_token_file: str | None = setting(
        None,
        "file holding a bearer token that PUT and DELETE /faults must present; required with --faults on "
        "and an admin host that is not loopback",
        parse=values.optional_text,
        check=values.always_valid,
        metavar="PATH",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            problem = spec.metadata["check"](getattr(self, spec.name))
            if problem:
                raise ConfigError(spec.name, problem)
        if self.faults_rules and self.faults != "on":
            raise ConfigError("faults_rules", "fault rules need --faults on")
        if self.faults == "on" and self.admin_token_file is None and not is_loopback(self.effective_admin_host):
            raise ConfigError(
                "admin_token_file",
                f"required with --faults on: the admin host {self.effective_admin_host} is not loopback, "
                "so changing faults needs a token",
            )

    @property
    def effective_admin_host(self) -> str:
        return self.admin_host if self.admin_host is not None else self.host


SETTINGS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Config)


# Settings whose flag is not their name: a rule is given once per --fault.
_FLAGS = {"faults_rules": "--fault"}


def flag_name(name: str) -> str:
    return _FLAGS.get(name) or "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def parse_value(name: str, text: str) -> Any:
    """Parse one setting from text; raises ConfigError naming the setting."""
    spec = next((s for s in SETTINGS if s.name == name), None)
    if spec is None:
        raise ConfigError(name, "no such setting")
    try:
        return spec.metadata["parse"](text)
    except ValueError as error:
        raise ConfigError(name, str(error)) from None


def parse_values(name: str, texts: list[str]) -> tuple[Any, ...]:
    """A repeatable flag's values (``parse_each``); raises ConfigError naming the setting."""
    spec = next((s for s in SETTINGS if s.name == name), None)
    if spec is None or spec.metadata["parse_each"] is None:
        raise ConfigError(name, "not a repeatable setting")
    try:
        return tuple(spec.metadata["parse_each"](text) for text in texts)
    except ValueError as error:
        raise ConfigError(name, str(error)) from None
