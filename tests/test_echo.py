"""The echo engine over real sockets: bytes, chunking, half-close, many clients, stats."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import threading

import pytest

from server.config import Config
from server.core import EchoServer
from server.observe.exchange import Exchange
from tests.conftest import ServerFactory
from tests.helpers import echo_round_trip, read_exactly, read_until_eof, wait_readable

SIZES = [0, 1, 2, 7, 100, 1023, 1024, 1025, 65_535, 65_536, 65_537, 1 << 20, 8 << 20]


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", SIZES)
def test_random_bytes_come_back_exactly(make_server: ServerFactory, size: int) -> None:
    server, _ = make_server()
    payload = os.urandom(size)
    assert sha(echo_round_trip(server.server_address, payload)) == sha(payload)


def test_every_byte_value_in_order(make_server: ServerFactory) -> None:
    server, _ = make_server()
    payload = bytes(range(256)) * 257
    assert echo_round_trip(server.server_address, payload) == payload


def test_64_mib_in_one_connection(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    payload = os.urandom(64 << 20)
    assert sha(echo_round_trip(server.server_address, payload, chunk=1 << 20, timeout=60)) == sha(payload)
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["bytes_in"] == closed.data["bytes_out"] == 64 << 20


def test_sliced_writes_are_reassembled(make_server: ServerFactory) -> None:
    server, _ = make_server()
    rng = random.Random(862)
    payload = os.urandom(200_000)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = bytearray()
        position = 0
        while position < len(payload):
            step = rng.choice([1, 2, 3, 17, 512, 4096, 33_333])
            sock.sendall(payload[position : position + step])
            position += step
            while wait_readable(sock, 0):
                received += sock.recv(65536)
        sock.shutdown(socket.SHUT_WR)
        received += read_until_eof(sock)
    assert sha(received) == sha(payload)


def test_half_close_echoes_everything_then_closes(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"first line\n")
        assert read_exactly(sock, 11) == b"first line\n"
        sock.sendall(b"owed at half-close")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"owed at half-close"
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["reason"] == "eof"


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat (nc) is not installed")
def test_netcat_round_trip(make_server: ServerFactory) -> None:
    server, _ = make_server()
    host, port = server.server_address[:2]
    text = b"hello from nc\nsecond line\n"
    result = subprocess.run(["nc", "-N", host, str(port)], input=text, capture_output=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text


@pytest.mark.parametrize("loops", [1, 3])
def test_500_concurrent_clients(make_server: ServerFactory, loops: int) -> None:
    server, _ = make_server(loops=loops)
    clients = [socket.create_connection(server.server_address[:2], timeout=20) for _ in range(500)]
    try:
        for index, sock in enumerate(clients):
            sock.sendall(struct.pack("!I", index) * 64)
        for index, sock in enumerate(clients):
            assert read_exactly(sock, 256) == struct.pack("!I", index) * 64
    finally:
        for sock in clients:
            sock.close()
    assert server.stats.snapshot().peak_active == 500


def test_reset_by_peer_affects_only_that_connection(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    with socket.create_connection(server.server_address[:2], timeout=10) as healthy:
        rude = socket.create_connection(server.server_address[:2], timeout=10)
        rude.sendall(b"x" * 1000)
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()  # RST
        recorder.wait_for(lambda e: e.name == "closed")
        healthy.sendall(b"still here")
        assert read_exactly(healthy, 10) == b"still here"
    closed = recorder.wait_for(lambda e: e.name == "closed" and e.data["reason"] != "eof")
    assert closed.data["reason"] in ("reset", "eof")


def test_stats_count_what_the_test_did(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    sizes = [10, 1000, 100_000, 0, 5]
    for size in sizes:
        echo_round_trip(server.server_address, os.urandom(size))
    recorder.wait_for(lambda e: len(recorder.named("closed")) == len(sizes))
    stats = server.stats.snapshot()
    assert stats.accepted == stats.closed == len(sizes)
    assert stats.active == 0
    assert stats.bytes_received == stats.bytes_sent == sum(sizes)
    assert dict(stats.closed_by_reason) == {"eof": len(sizes)}
    assert stats.duration_s.count == len(sizes)
    assert stats.errors == 0


def test_long_connections_bytes_reach_stats_before_close(make_server: ServerFactory) -> None:
    server, recorder = make_server(stats_interval=0.2)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"z" * 5000)
        read_exactly(sock, 5000)
        # The scheduler folds open connections' bytes in once a second; a periodic
        # stats event shows when it has.
        stats = recorder.wait_for(lambda e: e.name == "stats" and e.data["bytes_received"] == 5000)
        assert stats.data["active"] == 1


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
def test_dual_stack_listens_on_ipv6_and_ipv4(make_server: ServerFactory) -> None:
    server, _ = make_server(host="::")
    port = server.server_address[1]
    assert echo_round_trip(("::1", port), b"over ipv6") == b"over ipv6"
    assert echo_round_trip(("127.0.0.1", port), b"over ipv4") == b"over ipv4"


def test_serve_forever_returns_after_shutdown_from_another_thread() -> None:
    server = EchoServer(Config(port=0, admin_port=None, stats_interval=0), exchange=Exchange("serve-forever"))
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    assert server.ready.wait(5)
    assert echo_round_trip(server.server_address, b"served") == b"served"
    server.shutdown()
    serving.join(10)
    assert not serving.is_alive() and server.stopped.is_set()
    server.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="shut down"):
        server.start()
