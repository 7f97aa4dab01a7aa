"""Operating-system limits: file descriptors for every part of the server, and the
kernel's cap on the listen backlog. Real subprocesses with a lowered RLIMIT_NOFILE."""

from __future__ import annotations

import json
import resource
import socket
import urllib.request
from pathlib import Path

import pytest

from server.engine.listener import backlog_capped, refuse_new_connections
from server.lib.net import open_listener
from tests.helpers import ServerProcess, address_of, wait_readable


def _low_fd_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _answered(sock: socket.socket) -> str:
    """'echo' if the server echoed, 'closed' if it closed at once; never silence."""
    sock.sendall(b"x")
    assert wait_readable(sock, 10), "the client sat connected and unanswered"
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return "closed"
    return "echo" if data == b"x" else "closed"


def test_every_client_is_served_or_rejected_when_descriptors_are_short() -> None:
    """--loops 64 under RLIMIT_NOFILE 256: the schedulers' and the admin endpoint's
    descriptors are counted, so accept() never runs out; no client waits in silence."""
    server = ServerProcess("--port", "0", "--admin-port", "0", "--loops", "64", preexec_fn=lambda: _low_fd_limit(256))
    try:
        listening = server.wait_for("listening")
        server.start()
        clamp = next(r for r in server.seen if "RLIMIT_NOFILE" in str(r.get("message", "")))
        assert "for the server itself" in clamp["message"]
        clients = [socket.create_connection(server.address, timeout=10) for _ in range(150)]
        try:
            outcomes = [_answered(sock) for sock in clients]
        finally:
            for sock in clients:
                sock.close()
        host, port = address_of(listening, "admin_address")
        stats = json.load(urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10))
        assert outcomes.count("echo") >= 1 and outcomes.count("echo") + outcomes.count("closed") == 150
        assert stats["accept_errors"] == 0, "accept() ran out of descriptors"
        assert stats["rejected"].get("max_connections", 0) == outcomes.count("closed")
    finally:
        server.stop()


def test_a_backlog_above_somaxconn_is_reported(tmp_path: Path) -> None:
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    message = backlog_capped(1024, str(somaxconn))
    assert message is not None and "128" in message and "somaxconn" in message
    assert backlog_capped(128, str(somaxconn)) is None
    assert backlog_capped(1024, str(tmp_path / "missing")) is None


def test_the_server_warns_once_when_the_kernel_caps_its_backlog() -> None:
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if cap >= 65535:
        pytest.skip(f"net.core.somaxconn is {cap}: no backlog the server accepts is above it")
    server = ServerProcess("--port", "0", "--admin-port", "off", "--backlog", str(cap + 1))
    try:
        server.start()
        warnings = [r for r in server.seen if "somaxconn" in str(r.get("message", ""))]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    finally:
        server.stop()


def test_a_refusing_listener_keeps_its_backlog_and_completes_no_new_handshake() -> None:
    """The stop's first step (listener.refuse_new_connections): without it, a connection
    completed between the last accept() and close() is reset, which a balancer cannot
    retry (seen as 1 failed connection in 8 drain runs behind HAProxy)."""
    listener = open_listener("127.0.0.1", 0, 16)
    address = listener.getsockname()[:2]
    with listener, socket.create_connection(address, timeout=5) as before:
        assert refuse_new_connections(listener)
        late = socket.socket()
        late.settimeout(0.5)
        with late, pytest.raises(TimeoutError):
            late.connect(address)  # its SYN is dropped: no handshake completes
        listener.settimeout(5)
        accepted, _ = listener.accept()  # the one queued before is still there
        with accepted:  # and it is a whole connection: the filter is not the child's
            assert accepted.getpeername() == before.getsockname()
            before.sendall(b"ping")
            accepted.settimeout(5)
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
            assert before.recv(4) == b"pong"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()  # closed: the retried SYN is refused
