"""Listeners as data: which ports the server serves, and how each one's connections live.

    specs = listener_specs(config)                # built once from Config
    listeners = open_listeners(specs, backlog)    # all or nothing
    EchoServer(config, listeners=listeners)       # or a worker's, inherited from the supervisor

A ListenerSpec is plain, picklable data (name, kind, host, port, PROXY on or not); a
Listener is a spec with its open socket. Both are passed as one tuple to EchoServer, the
supervisor, each worker and Stats (which counts per listener name). ``serve`` is where a
kind becomes tasks: a stream listener (``tcp``, ``tls``) is an Acceptor handing off to
its Pipeline (engine/pipeline.py), ``udp`` one UdpEcho task. Adding a listener kind
touches this module (and its tests) only.

Threads: everything here runs on the thread that starts the server (the main thread),
before the server's other threads exist; the tasks ``serve`` returns run on the
acceptor's scheduler.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server.config import Config
from server.engine.acceptor import Acceptor, ProxyPolicy
from server.engine.banner import Banner, banner_step
from server.engine.connection import Connection
from server.engine.echo import plain_echo
from server.engine.pipeline import EchoWaits, Pipeline, Step, Transport
from server.engine.proxy_step import proxy_step
from server.engine.scheduler import Scheduler
from server.engine.tls import TlsContext
from server.engine.tls_echo import HandshakeFailures, handshake_step, tls_echo, wrapper
from server.engine.udp import UdpEcho, open_udp
from server.engine.waits import TaskGen, every
from server.lib.net import ListenError, open_listener
from server.observe.events import Event
from server.observe.stats import Stats

if TYPE_CHECKING:
    from server.faults.draw import FaultDraw
    from server.faults.udp import UdpFaults

Kind = Literal["tcp", "tls", "udp"]
KINDS: tuple[Kind, ...] = ("tcp", "tls", "udp")
FOLD_INTERVAL_S = 1.0  # how often the UDP task's counts reach Stats


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listener: ``name`` (unique; in events, metrics and logs), ``kind`` (the
    transport), where it listens, and whether its clients send a PROXY header first."""

    name: str
    kind: Kind
    host: str
    port: int
    proxy: bool = False

    @property
    def streams(self) -> bool:
        """A connection-oriented listener (it accepts connections)."""
        return self.kind != "udp"


@dataclass(frozen=True)
class Listener:
    """A spec and its open socket (listening, or bound for UDP)."""

    spec: ListenerSpec
    sock: socket.socket = field(compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> tuple[Any, ...]:
        return tuple(self.sock.getsockname())


class ListenerAddresses:
    """``address_of(name)`` and the TLS and UDP addresses, for a server that keeps its
    listeners in ``self.listeners`` (EchoServer, the supervisor)."""

    listeners: tuple[Listener, ...]

    def address_of(self, name: str) -> tuple[Any, ...] | None:
        """The address listener ``name`` is bound to, once started; None if there is none."""
        return next((listener.address for listener in self.listeners if listener.name == name), None)

    @property
    def tls_address(self) -> tuple[Any, ...] | None:
        return self.address_of("tls")

    @property
    def udp_address(self) -> tuple[Any, ...] | None:
        return self.address_of("udp")


def listener_specs(config: Config) -> tuple[ListenerSpec, ...]:
    """The listeners ``config`` asks for: the echo port, then TLS and UDP if set.
    --proxy-protocol applies to every stream listener (TCP and TLS alike: a balancer
    sends the header before any byte of the client's, TLS or not)."""
    proxy = config.proxy_protocol != "off"
    specs = [ListenerSpec("tcp", "tcp", config.host, config.port, proxy)]
    if config.tls_port is not None:
        specs.append(ListenerSpec("tls", "tls", config.host, config.tls_port, proxy))
    if config.udp_port is not None:
        specs.append(ListenerSpec("udp", "udp", config.host, config.udp_port))
    return tuple(specs)


def open_listeners(specs: Sequence[ListenerSpec], backlog: int) -> tuple[Listener, ...]:
    """Open every spec's socket, or none: on a failure the ones opened are closed and the
    ListenError names the port (``filename``: "the TLS port", unless it is the first)."""
    opened: list[Listener] = []
    try:
        for index, spec in enumerate(specs):
            try:
                if spec.kind == "udp":
                    sock = open_udp(spec.host, spec.port)
                else:
                    sock = open_listener(spec.host, spec.port, backlog)
            except ListenError as error:
                if index == 0 or error.filename:
                    raise
                raise ListenError(error.errno, error.strerror, f"the {spec.name.upper()} port") from None
            opened.append(Listener(spec, sock))
    except OSError:
        for listener in opened:
            listener.sock.close()
        raise
    return tuple(opened)


def load_tls(config: Config, specs: Sequence[ListenerSpec]) -> TlsContext | None:
    """The TLS context if any listener needs one (TlsError names the file at fault)."""
    if not any(spec.kind == "tls" for spec in specs):
        return None
    return TlsContext.load(config.tls_cert, config.tls_key, config.tls_client_ca, config.tls_alpn)


@dataclass
class ServerParts:
    """What a listener's tasks share with the server that serves it (built by EchoServer)."""

    config: Config
    stats: Stats
    publish: Callable[[Event], None]
    loops: Sequence[Scheduler]
    next_id: Callable[[], int]
    on_close: Callable[[Connection], None]
    on_ready: Callable[[], None]
    banner: Banner | None
    tls: TlsContext | None
    sole_owner: bool  # no other process accepts on these sockets (not a worker's)
    takes_backlog: Callable[[], bool] | None = None  # asked at the stop (Acceptor)
    handshake_failures: HandshakeFailures = field(default_factory=HandshakeFailures)
    faults: FaultDraw | None = None  # --faults on: each connection (datagram) draws (server/faults/)
    home: Scheduler | None = None  # the acceptors' scheduler: a hand-off to it is a direct call


@dataclass(frozen=True, slots=True)
class Serving:
    """A task to spawn on the acceptor's scheduler, with Scheduler.spawn's flags."""

    task: TaskGen
    sock: socket.socket | None
    daemon: bool  # closed at once at the stop (an acceptor takes its backlog then)
    critical: bool  # must live until the stop: its end is the server's failure


def serve(listener: Listener, parts: ServerParts, first: bool) -> list[Serving]:
    """The tasks that serve ``listener`` on the acceptor's scheduler. ``first``: this
    listener's acceptor says when the server is ready."""
    spec, config = listener.spec, parts.config
    if spec.kind == "udp":
        udp = UdpEcho(
            listener.sock,
            parts.stats,
            rate=config.udp_rate,
            global_rate=config.udp_global_rate,
            faults=udp_faults(parts.faults) if parts.faults is not None else None,
        )
        return [
            Serving(udp.run(), listener.sock, daemon=False, critical=True),  # Shutdown ends it
            Serving(every(FOLD_INTERVAL_S, udp.fold), None, daemon=True, critical=False),
        ]
    proxy = (
        ProxyPolicy.from_settings(config.proxy_protocol, config.proxy_protocol_timeout, config.proxy_protocol_from)
        if spec.proxy
        else None
    )
    acceptor = Acceptor(
        listener.sock,
        parts.loops,
        stats=parts.stats,
        publish=parts.publish,
        max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
        on_ready=parts.on_ready if first else lambda: None,
        next_id=parts.next_id,
        proxy=proxy,
        sole_owner=parts.sole_owner,
        name=spec.name,
        takes_backlog=parts.takes_backlog,
        home=parts.home,
    )
    acceptor.start_connection = pipeline_for(spec, parts, acceptor).start
    return [Serving(acceptor.run(), listener.sock, daemon=True, critical=True)]


def udp_faults(draw: FaultDraw) -> UdpFaults:
    from server.faults.udp import UdpFaults  # only with --faults on

    return UdpFaults(draw)


def pipeline_for(spec: ListenerSpec, parts: ServerParts, acceptor: Acceptor) -> Pipeline:
    """A stream listener's connection life: [PROXY] -> [TLS handshake] -> [banner] -> loop."""
    config = parts.config
    waits = EchoWaits.from_timeouts(config.idle_timeout, config.write_stall_timeout, config.buffer_size)
    steps: list[Step] = []
    gate = acceptor.proxy_admission
    if gate is not None:
        steps.append(proxy_step(gate))
    wrap = None
    if spec.kind == "tls":
        assert parts.tls is not None, "load_tls(...) before serving a TLS listener"
        wrap = wrapper(parts.tls)
        steps.append(handshake_step(config.tls_handshake_timeout, parts.handshake_failures))
    if parts.banner is not None:
        steps.append(banner_step(parts.banner, waits))
    transport: Transport = tls_echo if spec.kind == "tls" else plain_echo
    if parts.faults is not None:  # the draw after the PROXY header; unfaulted: this transport
        from server.faults.transport import faulted_transport  # only with --faults on

        transport = faulted_transport(transport, parts.faults)
    return Pipeline(spec.name, tuple(steps), transport, waits, parts.on_close, wrap, gate)
