"""Faults under --workers 2: the supervisor holds the one policy, both workers apply it,
the fired counts and /metrics are sums over the workers, a change reaches every worker,
and a SIGHUP reload's new generation starts with the policy as it is (a refuse or an
unready keeps its time)."""

from __future__ import annotations

import errno
import http.client
import json
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import ServerProcess, address_of, read_exactly, read_until_eof

pytestmark = pytest.mark.slow


def admin_call(admin: tuple[str, int], method: str, path: str, body: Any = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection(*admin, timeout=10)
    try:
        connection.request(method, path, None if body is None else json.dumps(body).encode())
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """The workers' counts reach the supervisor every 0.5 s: wait for them to add up."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the workers' counts did not add up in time"
        select.select([], [], [], 0.1)


def echo_once(address: tuple[str, int], payload: bytes = b"hello") -> tuple[bytes | None, str]:
    """What comes back before the close (None if the connection was reset), and the
    client's address as the server's events name it."""
    try:
        with socket.create_connection(address, timeout=10) as sock:
            host, port = sock.getsockname()[:2]
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock), f"{host}:{port}"
            except OSError as error:
                # A reset that lands before the shutdown makes it fail with ENOTCONN.
                if error.errno not in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE):
                    raise
                return None, f"{host}:{port}"
    except ConnectionResetError:  # already at connect (loopback is that fast)
        return None, ""


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(
        "--port=0", "--admin-port=0", "--workers=2", "--stats-interval=0", "--faults=on", "--fault=close:after_bytes=3"
    )
    try:
        yield process
    finally:
        process.stop()


def test_one_policy_for_both_workers_summed_and_kept_across_sighup(server: ServerProcess) -> None:
    admin = address_of(server.wait_for("listening"), "admin_address")
    server.start()
    served = 0
    workers_seen: set[int] = set()
    while workers_seen != {0, 1}:  # the kernel hands connections to whichever worker accepts first
        assert served < 400, f"only workers {workers_seen} served"
        echoed, peer = echo_once(server.address)
        assert echoed == b"hel"
        served += 1
        workers_seen.add(server.wait_for("closed", peer=peer)["worker"])

    def fired() -> list[int]:
        return list(json.loads(admin_call(admin, "GET", "/faults")[1])["fired"])

    eventually(lambda: fired() == [served])
    metrics = admin_call(admin, "GET", "/metrics")[1]
    found = re.search(r'^echo_faults_injected_total\{kind="close",listener="tcp"\} (\d+)$', metrics, re.M)
    assert found is not None and int(found.group(1)) == served

    # A change reaches both workers: from now on every connection is reset.
    assert admin_call(admin, "PUT", "/faults", [{"kind": "reset"}, {"kind": "unready", "for_s": 60}])[0] == 200
    assert admin_call(admin, "GET", "/readyz")[0] == 503
    eventually(lambda: all(echo_once(server.address)[0] is None for _ in range(20)))

    # SIGHUP: a new generation, with the policy as it is now.
    server.signal(signal.SIGHUP)
    server.wait_for("reloaded", generation=2)
    assert all(echo_once(server.address)[0] is None for _ in range(20))
    document = json.loads(admin_call(admin, "GET", "/faults")[1])
    assert document["rules"][0] == {"kind": "reset"}
    assert [state["kind"] for state in document["active"]] == ["unready"]
    assert admin_call(admin, "GET", "/readyz")[0] == 503
    assert admin_call(admin, "DELETE", "/faults")[0] == 200
    eventually(lambda: echo_once(server.address)[0] == b"hello")
    server.signal(signal.SIGTERM)
    assert server.finish() == 0


def test_a_rule_can_target_one_worker() -> None:
    server = ServerProcess("--port=0", "--admin-port=off", "--workers=2", "--faults=on", "--fault=reset:worker=1")
    try:
        server.start()
        outcomes: dict[int, set[str]] = {0: set(), 1: set()}
        for _ in range(400):
            if outcomes[0] and outcomes[1]:
                break
            echoed, peer = echo_once(server.address)
            if not peer:
                continue  # reset before connect() returned: its worker is in the closed event we cannot name
            closed = server.wait_for("closed", peer=peer)
            outcomes[closed["worker"]].add(closed["reason"])
            assert (echoed is None) == (closed["reason"] == "fault_reset")
        assert outcomes == {0: {"eof"}, 1: {"fault_reset"}}
    finally:
        server.stop()


def test_refuse_holds_the_shared_listener_then_lets_go(server: ServerProcess) -> None:
    admin = address_of(server.wait_for("listening"), "admin_address")
    server.start()
    with socket.create_connection(server.address, timeout=5) as open_before:
        open_before.sendall(b"x")  # a round trip: it drew under the startup rule (3 bytes, then FIN)
        assert read_exactly(open_before, 1) == b"x"
        set_at = time.monotonic()
        assert admin_call(admin, "PUT", "/faults", [{"kind": "refuse", "for_s": 1.5}])[0] == 200

        def refused() -> bool:
            probe = socket.socket()
            probe.settimeout(0.2)
            with probe:
                try:
                    probe.connect(server.address)
                except TimeoutError:
                    return True  # the SYN went unanswered
                return False

        eventually(refused, timeout=1.0)  # the workers take the change within milliseconds
        open_before.sendall(b"yzw")  # it keeps what it drew, and echoes through the refusal
        assert read_until_eof(open_before) == b"yz"
    eventually(lambda: not refused(), timeout=5.0)  # a balancer's connect attempts, 0.2 s each
    assert 1.5 <= time.monotonic() - set_at < 3.5
    assert echo_once(server.address)[0] == b"hello"  # the PUT replaced the startup rule
