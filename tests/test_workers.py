"""--workers N: a supervisor, its worker processes, one port, one log, one admin endpoint.

Real processes and real signals: each test runs ``python3 -m server --workers N`` and
reads its JSON log. Nothing sleeps to synchronize: tests wait for log lines, socket
answers and process exits, each with a bounded timeout.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ServerProcess, address_of, read_exactly, run_cli

pytestmark = pytest.mark.slow


def start(*args: str, workers: int = 2) -> ServerProcess:
    server = ServerProcess("--port", "0", "--admin-port", "0", "--workers", str(workers), *args)
    server.start()
    return server


@pytest.fixture
def cleanup() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def admin_get(server: ServerProcess, path: str) -> tuple[int, str]:
    host, port = address_of(server.wait_for("listening"), "admin_address")
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def round_trip(address: tuple[str, int], payload: bytes = b"ping") -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(payload)
        return read_exactly(sock, len(payload))


def open_echoing(address: tuple[str, int], **bind: Any) -> socket.socket:
    """A connection that has echoed once (so it was admitted, not closed at the door)."""
    sock = socket.create_connection(address, timeout=5, **bind)
    sock.sendall(b"hi")
    assert read_exactly(sock, 2) == b"hi"
    return sock


def is_rejected(address: tuple[str, int], **bind: Any) -> bool:
    """True if the server closes the connection without echoing a byte."""
    with socket.create_connection(address, timeout=5, **bind) as sock:
        try:
            sock.sendall(b"hi")
            return sock.recv(2) == b""
        except ConnectionResetError:
            return True


def worker_pids(server: ServerProcess, count: int, generation: int = 1) -> dict[int, int]:
    """worker slot -> pid of the first ``count`` workers of ``generation``."""
    pids: dict[int, int] = {}
    for index in range(count):
        record = server.wait_for("worker_ready", worker=index, generation=generation)
        pids[index] = int(record["pid"])
    return pids


def stop(server: ServerProcess, timeout: float = 15.0) -> int:
    server.signal(signal.SIGTERM)
    return server.finish(timeout)


def test_two_workers_share_the_port_and_both_serve(cleanup: list[ServerProcess]) -> None:
    server = start()
    cleanup.append(server)
    for n in range(200):
        payload = f"message {n}".encode()
        assert round_trip(server.address, payload) == payload
    assert stop(server) == 0
    by_worker = Counter(r["worker"] for r in server.seen if r.get("event") == "opened")
    assert sum(by_worker.values()) == 200
    assert set(by_worker) == {0, 1}
    assert min(by_worker.values()) >= 50, by_worker  # each at least 25%
    stopped = server.seen[-1]
    assert stopped["event"] == "stopped" and stopped["accepted"] == 200


def test_sigterm_drains_all_workers_with_admin_clients_attached(cleanup: list[ServerProcess]) -> None:
    server = start("--shutdown-timeout", "1")
    cleanup.append(server)
    for _ in range(40):
        round_trip(server.address)
    idle = [open_echoing(server.address) for _ in range(6)]
    host, port = address_of(server.wait_for("listening"), "admin_address")
    keep_alive = http.client.HTTPConnection(host, port, timeout=5)
    keep_alive.request("GET", "/healthz")
    assert keep_alive.getresponse().read() is not None
    stream = socket.create_connection((host, port), timeout=5)
    stream.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in stream.recv(64)
    try:
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_for("stopping")
        status, _ = admin_get(server, "/readyz")
        assert status == 503
        assert idle[0].send(b"x") == 1 and read_exactly(idle[0], 1) == b"x"  # still echoed while draining
        code = server.finish(10)
        took = time.monotonic() - signalled
    finally:
        for sock in [*idle, stream]:
            sock.close()
        keep_alive.close()
    assert code == 0, server.stderr()
    assert took < 1.0 + 1.5, took
    last = server.seen[-1]
    assert last["event"] == "stopped"
    exited = [r for r in server.seen if r.get("event") == "worker_exited"]
    assert len(exited) == 2 and all(r["status"] == "exit 0" for r in exited)
    assert last["accepted"] == sum(r["accepted"] for r in exited) == 46
    assert last["closed"] == sum(r["closed"] for r in exited) == 46
    assert last["bytes_sent"] == sum(r["bytes_sent"] for r in exited)


def test_a_killed_worker_loses_only_its_connections_and_is_replaced_within_a_second(
    cleanup: list[ServerProcess],
) -> None:
    server = start()
    cleanup.append(server)
    pids = worker_pids(server, 2)
    held: dict[int, list[socket.socket]] = {0: [], 1: []}
    while min(len(socks) for socks in held.values()) < 5:
        sock = open_echoing(server.address)
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        held[server.wait_for("opened", peer=peer)["worker"]].append(sock)
    load = _ConnectLoop(server.address)
    load.start()
    try:
        load.wait_for_successes(50)
        killed_at = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        exited = server.wait_for("worker_exited", pid=pids[0])
        replacement = server.wait_for("worker_ready", worker=0, restarts=1, timeout=5)
        ready_after = time.monotonic() - killed_at
        before = load.successes
        load.wait_for_successes(before + 50)
    finally:
        load.stop()
    assert exited["status"] == "killed by SIGKILL"
    assert exited["connections_lost"] >= 5
    assert replacement["pid"] != pids[0] and replacement["restart_s"] < 1.0
    assert ready_after < 1.5, ready_after  # kill -> noticed -> spawned -> serving, seen from here
    assert load.failures <= 2, load.failures  # at most what the dead worker had just accepted
    for sock in held[1]:  # the other worker's connections never noticed
        sock.sendall(b"ok")
        assert read_exactly(sock, 2) == b"ok"
    for sock in held[0]:  # the dead worker's are gone
        try:
            sock.sendall(b"ok")
            assert sock.recv(2) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
    status, metrics = admin_get(server, "/metrics")
    assert status == 200
    assert 'echo_worker_restarts_total{worker="0"} 1' in metrics
    assert 'echo_worker_restarts_total{worker="1"} 0' in metrics
    for socks in held.values():
        for sock in socks:
            sock.close()
    assert stop(server) == 0


def test_sighup_reloads_with_zero_refused_connections(cleanup: list[ServerProcess]) -> None:
    server = start()
    cleanup.append(server)
    old = worker_pids(server, 2)
    on_old = open_echoing(server.address)
    load = _ConnectLoop(server.address, rate=1000.0)
    load.start()
    try:
        load.wait_for_successes(200)
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", generation=2)
        for pid in old.values():
            server.wait_for("worker_exited", pid=pid)
        before = load.successes
        load.wait_for_successes(before + 200)
    finally:
        load.stop()
    assert load.successes >= 400
    assert (load.refused, load.reset, load.unanswered) == (0, 0, 0), load.problems
    on_old.close()
    assert stop(server) == 0
    exited = {r["pid"]: r for r in server.seen if r.get("event") == "worker_exited"}
    assert all(exited[pid]["status"] == "exit 0" for pid in old.values())


def test_a_connection_on_an_old_worker_keeps_echoing_through_a_reload(cleanup: list[ServerProcess]) -> None:
    server = start("--shutdown-timeout", "30")
    cleanup.append(server)
    worker_pids(server, 2)
    sock = open_echoing(server.address)
    try:
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", generation=2)
        for n in range(5):
            sock.sendall(b"%d" % n)
            assert read_exactly(sock, 1) == b"%d" % n
        assert round_trip(server.address) == b"ping"  # and the new generation serves
    finally:
        sock.close()
    assert stop(server) == 0


def test_limits_hold_for_the_whole_server_exactly(cleanup: list[ServerProcess]) -> None:
    server = start("--max-connections", "100", "--max-connections-per-ip", "60", workers=4)
    cleanup.append(server)
    worker_pids(server, 4)
    first = [open_echoing(server.address) for _ in range(60)]
    try:
        assert is_rejected(server.address)  # 61st from 127.0.0.1: per address, across workers
        other = [open_echoing(server.address, source_address=("127.0.0.2", 0)) for _ in range(40)]
        assert is_rejected(server.address, source_address=("127.0.0.3", 0))  # the 101st in all
        leaving = first.pop()
        peer = f"127.0.0.1:{leaving.getsockname()[1]}"
        leaving.close()
        server.wait_for("closed", peer=peer)  # published after its place was given back
        first.append(open_echoing(server.address))
        assert is_rejected(server.address, source_address=("127.0.0.3", 0))
    finally:
        for sock in first + locals().get("other", []):
            sock.close()
    assert stop(server) == 0
    last = server.seen[-1]
    assert last["accepted"] == 101
    assert last["rejected"] == {"max_connections_per_ip": 1, "max_connections": 2}


def test_a_crash_loop_stops_the_supervisor_with_exit_1(cleanup: list[ServerProcess]) -> None:
    server = start()
    cleanup.append(server)
    started = time.monotonic()
    for restarts in range(5):  # worker 0, then each of its replacements
        os.kill(int(server.wait_for("worker_ready", worker=0, restarts=restarts)["pid"]), signal.SIGKILL)
    assert time.monotonic() - started < 10.0
    code = server.finish(15)
    assert code == 1, server.stderr()
    failed = [r for r in server.seen if r.get("event") == "failed"]
    assert failed and "crash loop" in failed[0]["reason"]
    assert server.seen[-1]["event"] == "stopped"


def test_workers_1_has_no_supervisor(cleanup: list[ServerProcess]) -> None:
    server = start(workers=1)
    cleanup.append(server)
    assert round_trip(server.address) == b"ping"
    assert stop(server) == 0
    assert not [r for r in server.seen if r.get("event", "").startswith("worker_")]


# --- helpers -----------------------------------------------------------------------------


class _ConnectLoop:
    """A client thread: connect, send 4 bytes, read them back, close; up to ``rate`` a
    second. Counts what went wrong, by kind."""

    def __init__(self, address: tuple[str, int], rate: float = 500.0) -> None:
        self._address = address
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.successes = 0
        self.refused = self.reset = self.unanswered = 0
        self.problems: list[str] = []

    @property
    def failures(self) -> int:
        return self.refused + self.reset + self.unanswered

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for_successes(self, count: int, timeout: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.successes >= count or not self._thread.is_alive(), timeout):
                raise AssertionError(f"{self.successes} of {count} round trips within {timeout} s")

    def _run(self) -> None:
        next_at = time.monotonic()
        payload = b"ping"
        while not self._stop.is_set():
            next_at += self._interval
            try:
                with socket.create_connection(self._address, timeout=5) as sock:
                    sock.sendall(payload)
                    got = sock.recv(4)
                    if got != payload:
                        raise TimeoutError(f"answered {got!r}")
            except ConnectionRefusedError as error:
                self._count("refused", error)
            except (ConnectionResetError, BrokenPipeError) as error:
                self._count("reset", error)
            except OSError as error:  # a timeout, or an EOF without the echo
                self._count("unanswered", error)
            else:
                with self._cond:
                    self.successes += 1
                    self._cond.notify_all()
            pause = next_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
            else:
                next_at = time.monotonic()

    def _count(self, kind: str, error: Exception) -> None:
        with self._cond:
            setattr(self, kind, getattr(self, kind) + 1)
            self.problems.append(f"{kind}: {error!r}")
            self._cond.notify_all()


def test_the_bench_counts_every_process_of_a_supervised_server() -> None:
    from loadtest import bench, scenarios, servers

    workers_row = scenarios.SCENARIOS[6]
    assert workers_row.workers
    assert [n for n in servers.SERVERS if bench.runs_in(n, workers_row)] == ["echo-service", servers.WORKERS_SERVER]
    assert servers.WORKERS_SERVER not in [n for n in servers.SERVERS if bench.runs_in(n, scenarios.SCENARIOS[1])]
    server = servers.ServerUnderTest(servers.WORKERS_SERVER, None)
    try:
        assert round_trip(server.address) == b"ping"
        assert len(server._process_tree()) >= 3  # the supervisor and its two workers
        assert server.memory_kib("VmRSS") > 3 * 5000
    finally:
        server.stop()


def test_a_second_stop_signal_kills_the_workers_and_exits_1_at_once(cleanup: list[ServerProcess]) -> None:
    server = start("--shutdown-timeout", "60")
    cleanup.append(server)
    pids = worker_pids(server, 2)
    sock = open_echoing(server.address)  # keeps its worker draining for a minute
    try:
        server.signal(signal.SIGINT)
        server.wait_for("stopping")
        signalled = time.monotonic()
        server.signal(signal.SIGINT)
        code = server.finish(10)
        assert time.monotonic() - signalled < 3.0
        assert code == 1
        for pid in pids.values():  # no worker outlives its supervisor, even one still draining
            assert not _alive(pid, timeout=5.0), pid
    finally:
        sock.close()


def _alive(pid: int, timeout: float) -> bool:
    """Whether ``pid`` still runs after ``timeout``: a pidfd turns readable at its exit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        return not select.select([fd], [], [], timeout)[0]
    finally:
        os.close(fd)


def test_limits_hold_across_workers_by_the_proxy_headers_address(cleanup: list[ServerProcess]) -> None:
    server = start("--proxy-protocol", "v1", "--max-connections", "4", "--max-connections-per-ip", "2")
    cleanup.append(server)
    worker_pids(server, 2)

    def through_balancer(client: str) -> socket.socket | None:
        """A connection that says it carries ``client``: echoing (admitted) or None."""
        sock = socket.create_connection(server.address, timeout=5)
        sock.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 7007\r\nhi".encode())
        try:
            if sock.recv(2) == b"hi":
                return sock
        except ConnectionResetError:
            pass
        sock.close()
        return None

    held = [through_balancer("192.0.2.1"), through_balancer("192.0.2.1")]
    try:
        assert all(held)
        assert through_balancer("192.0.2.1") is None  # per client address, whichever worker
        held += [through_balancer("192.0.2.2"), through_balancer("192.0.2.2")]
        assert all(held)
        assert through_balancer("192.0.2.3") is None  # the 5th in all
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    assert stop(server) == 0
    last = server.seen[-1]
    assert last["accepted"] == 4
    assert last["rejected"] == {"max_connections_per_ip": 1, "max_connections": 1}


def test_events_streams_every_workers_events_in_one(cleanup: list[ServerProcess]) -> None:
    server = start()
    cleanup.append(server)
    worker_pids(server, 2)
    host, port = address_of(server.wait_for("listening"), "admin_address")
    with socket.create_connection((host, port), timeout=10) as stream:
        stream.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"\r\n\r\n" not in seen:
            seen += stream.recv(4096)
        for _ in range(40):
            round_trip(server.address)
        workers: set[int] = set()
        while len(workers) < 2:
            chunk = stream.recv(65536)
            assert chunk, f"the stream ended; saw workers {workers}"
            seen += chunk
            workers = {int(w) for w in re.findall(rb'"event":"opened"[^\n]*"worker":(\d+)', seen)}
    assert workers == {0, 1}
    assert stop(server) == 0


def test_udp_is_served_by_every_worker_within_the_whole_servers_rate(cleanup: list[ServerProcess]) -> None:
    server = start("--udp-port", "0", "--udp-rate", "20", "--udp-global-rate", "1000")
    cleanup.append(server)
    worker_pids(server, 2)
    udp_address = address_of(server.wait_for("listening"), "udp_address")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"first", udp_address)
        assert client.recvfrom(64)[0] == b"first"
        for n in range(99):
            client.sendto(b"%d" % n, udp_address)
        assert stop(server) == 0
        client.setblocking(False)
        echoed = 1
        try:
            while client.recv(64):
                echoed += 1
        except BlockingIOError:
            pass
    udp = server.seen[-1]["udp"]
    assert udp["datagrams_received"] == 100
    assert udp["datagrams_sent"] == echoed
    assert 1 < echoed <= 20 + 2, echoed  # each worker holds 1/2 of the rate: never more in all
    assert sum(udp["dropped"].values()) == 100 - echoed


def test_workers_setting_auto_and_bad_values() -> None:
    from server.arguments import load_config

    assert load_config(["--workers", "auto"], {}).workers == len(os.sched_getaffinity(0))
    assert load_config([], {"ECHO_WORKERS": "3"}).workers == 3
    assert load_config([], {}).workers == 1
    for bad in ("0", "two", "-1"):
        result = run_cli(["--workers", bad])
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "--workers" in result.stderr


def test_a_reload_keeps_the_settings_only_a_restart_can_change(caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from server.config import Config
    from server.workers.supervisor import Supervisor

    supervisor = Supervisor(Config(port=0, workers=2))
    with caplog.at_level(logging.WARNING, logger="echo.supervisor"):
        supervisor.reload(dataclasses.replace(supervisor.config, port=1234, max_connections=5))
    assert "port cannot change without a restart" in caplog.text
