"""UDP echo: real datagrams on loopback (nc -u, socat UDP, Python sockets bound to
distinct 127.0.0.x source addresses), the size extremes, the per-source and global
rate limits, the bounded source table (with a fake clock), and that nothing is ever
sent to an address that did not send first."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.engine.udp import TokenBucket, UdpEcho
from server.observe.metrics import render
from server.observe.stats import Stats
from tests.conftest import ServerFactory
from tests.helpers import run_cli

MAX_IPV4_PAYLOAD = 65_507


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _client(sockets: list[socket.socket], source_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(sock)
    sock.bind((source_ip, 0))
    sock.settimeout(10)
    return sock


def _udp_server(make_server: ServerFactory, **settings: Any) -> tuple[Any, tuple[str, int]]:
    server, _ = make_server(udp_port=0, **settings)
    assert server.udp_address is not None
    return server, (server.udp_address[0], server.udp_address[1])


def _echo(sock: socket.socket, address: tuple[str, int], payload: bytes) -> bytes:
    sock.sendto(payload, address)
    data, source = sock.recvfrom(70_000)
    assert source == address  # the answer comes from the echo port itself
    return data


def _nothing_more(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recvfrom(70_000)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(10)
    return False


def test_nc_u_round_trip(make_server: ServerFactory) -> None:
    if shutil.which("nc") is None:
        pytest.skip("needs nc")
    _, (host, port) = _udp_server(make_server)
    # nc -u sends each line it reads as a datagram; -w 2 ends it 2 s after the last answer.
    result = subprocess.run(
        ["nc", "-u", "-w", "2", host, str(port)], input=b"hello over udp\n", capture_output=True, timeout=30
    )
    assert result.stdout == b"hello over udp\n"


def test_socat_udp_round_trip(make_server: ServerFactory) -> None:
    if shutil.which("socat") is None:
        pytest.skip("needs socat")
    _, (host, port) = _udp_server(make_server)
    payload = bytes(range(256)) * 16  # 4 KiB, every byte value: one datagram
    result = subprocess.run(
        ["socat", "-t", "2", "-", f"UDP:{host}:{port}"], input=payload, capture_output=True, timeout=30
    )
    assert result.stdout == payload


def test_empty_and_largest_datagrams_come_back_unchanged(
    make_server: ServerFactory, sockets: list[socket.socket]
) -> None:
    server, address = _udp_server(make_server)
    client = _client(sockets, "127.0.0.1")
    assert _echo(client, address, b"") == b""
    big = bytes(i % 251 for i in range(MAX_IPV4_PAYLOAD))
    assert _echo(client, address, big) == big
    assert _nothing_more(client)  # one datagram back per datagram
    server.shutdown()  # folds the task's counts
    snapshot = server.stats.snapshot()
    assert snapshot.udp_datagrams_received == snapshot.udp_datagrams_sent == 2
    assert snapshot.listeners["udp"]["bytes_received"] == snapshot.listeners["udp"]["bytes_sent"] == MAX_IPV4_PAYLOAD
    assert snapshot.bytes_sent == MAX_IPV4_PAYLOAD
    text = render(snapshot, ready=False, draining=True)
    assert "echo_udp_received_datagrams_total 2" in text
    assert 'echo_listener_sent_bytes_total{listener="udp"} 65507' in text
    assert 'echo_udp_dropped_datagrams_total{reason="source_rate"} 0' in text


def test_a_flood_from_one_source_is_held_to_the_rate_while_another_is_served(
    make_server: ServerFactory, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    rate = 50
    server, address = _udp_server(make_server, udp_rate=rate)
    caplog.set_level(logging.WARNING, logger="echo.udp")
    flooder = _client(sockets, "127.0.0.2")
    other = _client(sockets, "127.0.0.3")
    bystander = _client(sockets, "127.0.0.4")  # sends nothing: must get nothing
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    started = time.monotonic()
    for i in range(2000):
        flooder.sendto(b"flood %d" % i, address)
        # The other source is answered in the middle of the flood; waiting for its echo also
        # keeps the server's socket buffer from overflowing (the kernel would drop, not us).
        if i % 100 == 99:
            assert _echo(other, address, b"still served %d" % i) == b"still served %d" % i
    # The socket is read in order: once this echo is back, every flood datagram was handled.
    assert _echo(other, address, b"last") == b"last"
    elapsed = time.monotonic() - started
    echoed = 0
    flooder.setblocking(False)
    while True:
        try:
            data, _ = flooder.recvfrom(100)
        except BlockingIOError:
            break
        assert data.startswith(b"flood ")
        echoed += 1
    assert rate <= echoed <= rate + rate * elapsed + 1, (echoed, elapsed)
    assert _nothing_more(bystander)
    said = [r for r in caplog.records if r.name == "echo.udp"]
    assert 1 <= len(said) <= elapsed + 1  # drops are logged at most once a second
    assert "source_rate" in said[0].getMessage() and "127.0.0.2" in said[0].getMessage()
    server.shutdown()
    snapshot = server.stats.snapshot()
    assert snapshot.udp_datagrams_received > 1000  # the server did see the flood
    assert snapshot.udp_dropped["source_rate"] == snapshot.udp_datagrams_received - snapshot.udp_datagrams_sent
    assert snapshot.udp_datagrams_sent == echoed + 21
    assert snapshot.listeners["udp"]["bytes_sent"] <= snapshot.listeners["udp"]["bytes_received"]


def test_the_global_cap_holds_across_sources(make_server: ServerFactory, sockets: list[socket.socket]) -> None:
    cap = 20
    server, address = _udp_server(make_server, udp_rate=1000, udp_global_rate=cap)
    clients = [_client(sockets, f"127.0.0.{n}") for n in (5, 6)]
    marker = _client(sockets, "127.0.0.7")
    marker.settimeout(0.5)
    started = time.monotonic()
    for i in range(60):  # 120 small datagrams: well within the server's socket buffer
        for client in clients:
            client.sendto(b"%d" % i, address)
    # Read in order: once a marker comes back, both floods were handled. (A marker can be
    # dropped too while the shared bucket is empty; the next one, later, gets through.)
    for _ in range(100):
        marker.sendto(b"marker", address)
        try:
            marker.recvfrom(100)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("no marker echoed")
    elapsed = time.monotonic() - started
    echoed = 0
    for client in clients:
        client.setblocking(False)
        while True:
            try:
                client.recvfrom(100)
            except BlockingIOError:
                break
            echoed += 1
    assert cap <= echoed <= cap + cap * elapsed + 1, (echoed, elapsed)
    server.shutdown()
    snapshot = server.stats.snapshot()
    assert snapshot.udp_datagrams_sent == echoed + 1
    assert snapshot.udp_datagrams_received > 100
    assert snapshot.udp_dropped["global_rate"] == snapshot.udp_datagrams_received - snapshot.udp_datagrams_sent


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_the_rate_up_to_one_second_of_burst() -> None:
    bucket = TokenBucket(10, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(20)) == 10
    assert sum(bucket.take(0.5) for _ in range(20)) == 5
    assert sum(bucket.take(100.0) for _ in range(20)) == 10  # never more than the burst
    slow = TokenBucket(0.5, now=0.0)
    assert [slow.take(t) for t in (0.0, 1.0, 2.0, 2.5, 4.0)] == [True, False, True, False, True]


def test_the_source_table_is_bounded_and_never_resets_a_busy_source() -> None:
    clock = _Clock()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        udp = UdpEcho(sock, Stats(), rate=2, global_rate=1000, max_sources=2, clock=clock)
        now = clock.now
        assert udp.admit("10.0.0.1", now) is None
        assert udp.admit("10.0.0.1", now) is None
        assert udp.admit("10.0.0.1", now) == "source_rate"  # its bucket is empty
        assert udp.admit("10.0.0.2", now) is None
        assert udp.admit("10.0.0.3", now) == "source_table_full"  # both entries still in use
        # Churning new addresses does not refill the busy source's bucket:
        assert udp.admit("10.0.0.1", now) == "source_rate"
        now += 1.0  # both buckets have refilled: their entries may go
        assert udp.admit("10.0.0.3", now) is None
        assert udp.admit("10.0.0.4", now) is None


def test_udp_port_in_use_exits_1_naming_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli(["--port", "0", "--admin-port", "off", "--udp-port", str(port)])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"echo-server: the UDP port: cannot listen on 127.0.0.1:{port}/udp: Address already in use"
    ]
