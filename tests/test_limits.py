"""Every limit: connection caps, idle timeout, write stall."""

from __future__ import annotations

import socket
import threading
import time

from server.core import FINAL_FLUSH_S
from server.observe.stats import REJECT_MAX_CONNECTIONS, REJECT_PER_IP
from server.observe.throttle import Throttle
from tests.conftest import ServerFactory
from tests.helpers import read_exactly, read_until_eof


def _closed_at_once(sock: socket.socket) -> bool:
    """The server closed without a byte: EOF (or a reset) on the first read."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_over_max_connections_is_closed_at_once_and_counted(make_server: ServerFactory) -> None:
    server, recorder = make_server(max_connections=3)
    address = server.server_address[:2]
    held = [socket.create_connection(address, timeout=10) for _ in range(3)]
    try:
        for sock in held:  # all three are served
            sock.sendall(b"ok")
            assert read_exactly(sock, 2) == b"ok"
        with socket.create_connection(address, timeout=10) as extra:
            assert _closed_at_once(extra)
        rejected = recorder.wait_for(lambda e: e.name == "rejected")
        assert rejected.data["reason"] == REJECT_MAX_CONNECTIONS
        assert server.stats.snapshot().rejected == {REJECT_MAX_CONNECTIONS: 1}
    finally:
        for sock in held:
            sock.close()
    # Once the held ones have closed, a new client is served again.
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 3)
    with socket.create_connection(address, timeout=10) as again:
        again.sendall(b"back")
        assert read_exactly(again, 4) == b"back"


def test_over_per_ip_limit_is_closed_at_once_and_said_at_most_once_a_second(make_server: ServerFactory) -> None:
    server, recorder = make_server(max_connections_per_ip=2)
    address = server.server_address[:2]
    held = [socket.create_connection(address, timeout=10) for _ in range(2)]
    burst = 20
    try:
        for sock in held:
            sock.sendall(b"hi")
            assert read_exactly(sock, 2) == b"hi"
        started = time.monotonic()
        for _ in range(burst):
            with socket.create_connection(address, timeout=10) as extra:
                assert _closed_at_once(extra)
        took = time.monotonic() - started
        stats = server.stats.snapshot()
        assert stats.rejected == {REJECT_PER_IP: burst}
        assert stats.active == 2
    finally:
        for sock in held:
            sock.close()
    server.shutdown()  # the acceptor reports what it held back: the counts add up
    events = recorder.named("rejected")
    assert all(e.data["reason"] == REJECT_PER_IP for e in events)
    assert sum(e.data["count"] for e in events) == burst
    # One event a second at most (plus the one at stop that reports the rest).
    assert len(events) <= int(took) + 2 < burst


def test_the_throttle_allows_once_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.allow() == 0  # the first is said at once
    for step in (0.1, 0.3, 0.5):  # within the second: held back and counted
        now[0] = 100.0 + step
        assert throttle.allow() is None
    assert throttle.held_back == 3
    now[0] = 100.99
    assert throttle.allow() is None
    now[0] = 101.0  # a whole interval after the last allowed: says how many it held back
    assert throttle.allow() == 4
    assert throttle.held_back == 0
    now[0] = 101.5
    assert throttle.allow() is None
    now[0] = 150.0
    assert throttle.allow() == 1


def test_idle_connection_is_closed(make_server: ServerFactory) -> None:
    server, recorder = make_server(idle_timeout=0.2)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"then silence")
        assert read_exactly(sock, 12) == b"then silence"
        assert read_until_eof(sock) == b""  # the server closes it
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["reason"] == "idle_timeout"
    assert server.stats.snapshot().timed_out == {"idle_timeout": 1}


def test_client_that_never_reads_is_closed_after_write_stall(make_server: ServerFactory) -> None:
    server, recorder = make_server(write_stall_timeout=0.3, buffer_size=4096)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.server_address[:2])
        sock.settimeout(10)
        chunk = b"s" * 65536
        sent = 0
        try:
            while sent < 256 << 20:  # the server must give up long before this
                sent += sock.send(chunk)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["reason"] == "write_stall"
    assert server.stats.snapshot().timed_out == {"write_stall": 1}


def test_a_slow_but_steady_reader_is_not_reset_as_a_write_stall(make_server: ServerFactory) -> None:
    """Reads 8 KiB every 50 ms, never pausing longer, for 4 write-stall periods. The
    kernel reports writable only once a third of the (autotuned, large) send buffer is
    free, so "could not flush within the timeout" resets it; "no progress" must not.
    (Loopback's MSS is 64 KiB: the reader's window opens, and the server sees progress,
    once per 64 KiB read, here every 0.4 s: within the 1 s timeout.)"""
    server, recorder = make_server(write_stall_timeout=1.0)
    pace = threading.Event()  # never set: its wait() is the reader's pace, not a sync
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:

        def writer() -> None:
            chunk = b"w" * 65536
            try:
                for _ in range(256):  # 16 MiB: far more than the buffers hold
                    sock.sendall(chunk)
            except OSError:
                pass  # the reader closed the socket: done

        thread = threading.Thread(target=writer)
        thread.start()
        received = 0
        deadline = time.monotonic() + 4 * 1.0
        while time.monotonic() < deadline:
            pace.wait(0.05)
            data = sock.recv(8192)  # a reset as write_stall would raise here
            assert data, "the server closed the connection"
            received += len(data)
        sock.shutdown(socket.SHUT_RDWR)
        thread.join(10)
    assert received >= 8192 * 40
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["reason"] == "reset"  # the client's close with unread data


def test_a_client_that_never_closes_does_not_hold_the_stop_past_its_fin(make_server: ServerFactory) -> None:
    """After the drain, a connection that owes nothing closes once the peer has
    acknowledged our FIN, not at the final-flush deadline."""
    server, recorder = make_server(shutdown_timeout=0.2)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"hi")
        assert read_exactly(sock, 2) == b"hi"
        started = time.monotonic()
        server.shutdown()
        took = time.monotonic() - started
        assert sock.recv(1) == b""  # the FIN; the client never closes before the stop ends
    assert took < 0.2 + FINAL_FLUSH_S / 2, f"the stop took {took:.2f} s"
    assert recorder.wait_for(lambda e: e.name == "closed").data["reason"] == "shutdown"
