"""The acceptor's per-connection set-up: what each admitted socket gets, with as few
system calls as the kernel allows (TCP_NODELAY inherited from the listener).

Real sockets on loopback; the acceptor's task runs on a real Scheduler driven by hand.
"""

from __future__ import annotations

import itertools
import socket
import time

import pytest

from server.engine.acceptor import Acceptor
from server.engine.scheduler import Scheduler
from server.lib.net import format_address
from server.observe.events import Event
from server.observe.stats import Stats

CONNECTIONS = 5


Seen = tuple[int, bool, socket.AddressFamily, tuple[object, ...], str]


def accepted_options(
    listener: socket.socket, clear_on_listener: bool
) -> tuple[list[Seen], list[Event], list[tuple[object, ...]]]:
    """(TCP_NODELAY, blocking, family, remote address, peer) of each socket the acceptor
    hands over, its events, and the clients' own addresses."""
    listener.setblocking(False)
    loop = Scheduler("acceptor", buffer_size=0)
    seen: list[Seen] = []
    published: list[Event] = []

    def start(scheduler: Scheduler, sock: socket.socket, conn_id: int, peer: str, ip: str) -> None:
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen.append((nodelay, sock.getblocking(), sock.family, sock.getpeername(), peer))
        sock.close()

    acceptor = Acceptor(
        listener,
        [loop],
        stats=Stats(),
        publish=published.append,
        max_connections=100,
        max_connections_per_ip=100,
        on_ready=lambda: None,
        next_id=itertools.count(1).__next__,
        home=loop,
    )
    if clear_on_listener:  # as a kernel that does not copy the option to accepted sockets
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    acceptor.start_connection = start
    loop.spawn(acceptor.run(), listener, daemon=True, critical=True)
    host, port = listener.getsockname()[:2]
    clients = [socket.create_connection((host, port), timeout=5) for _ in range(CONNECTIONS)]
    addresses = [client.getsockname() for client in clients]
    try:
        deadline = time.monotonic() + 10
        while len(seen) < CONNECTIONS and time.monotonic() < deadline:
            loop.run_once()
    finally:
        for client in clients:
            client.close()
        loop.request_stop(loop.now, loop.now)
        loop.run()
        listener.close()
    return seen, published, addresses


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("inherited", [True, False], ids=["inherited", "set-on-each"])
def test_every_admitted_connection_is_non_blocking_with_nodelay(host: str, inherited: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family, backlog=16)
    seen, published, addresses = accepted_options(listener, clear_on_listener=not inherited)
    assert len(seen) == CONNECTIONS
    assert all(nodelay != 0 and not blocking for nodelay, blocking, *_ in seen), seen
    assert {kind for _, _, kind, _, _ in seen} == {family}
    assert sorted(remote for *_, remote, _ in seen) == sorted(addresses)
    assert sorted(peer for *_, peer in seen) == sorted(format_address(address) for address in addresses)
    assert [record.conn_id for record in published if record.name == "opened"] == list(range(1, CONNECTIONS + 1))
