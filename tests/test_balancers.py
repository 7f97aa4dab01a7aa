"""End to end behind the real balancers: three ``python3 -m server`` replicas behind HAProxy
(send-proxy-v2, health checks on /readyz) or nginx (stream, proxy_protocol on), each
config rendered from deploy/ with the real loopback ports.

- echo through the balancer; the replica's events and banner show the client's address;
- the per-address limit counts the client from the header, not the balancer;
- SIGTERM one replica under a client bench: /readyz 503, no new connection reaches it,
  its open connections keep echoing, 0 failed new connections;
- kill -9 one replica: only its connections fail, new ones succeed;
- untrusted, malformed, truncated and slow headers are rejected as documented.

Clients bind distinct loopback source addresses (127.x.y.z) so that the header's address
tells them apart. Balancers need a fixed port: one is found by binding port 0, and the
start is retried once on another if the port was taken meanwhile. Numbers from the bench
are printed (pytest -s) and recorded as test properties.
"""

from __future__ import annotations

import http.client
import itertools
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, address_of, read_exactly, read_until_eof, wait_readable

pytestmark = pytest.mark.slow

DEPLOY = ROOT / "deploy"
NGINX_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
HEADER_TIMEOUT_S = 1.0


# --- replicas --------------------------------------------------------------------------------


@dataclass
class Replica:
    process: ServerProcess
    address: tuple[str, int]
    admin: tuple[str, int]

    @property
    def local(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(*self.admin, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def readyz(self) -> int:
        return self.get("/readyz")[0]

    def rejected(self, reason: str) -> int:
        """The replica's rejected count for ``reason``, from /metrics."""
        found = re.search(
            rf'^echo_connections_rejected_total{{reason="{reason}"}} (\d+)', self.get("/metrics")[1], re.M
        )
        return int(found.group(1)) if found else 0


def start_replica(*extra: str) -> Replica:
    process = ServerProcess(
        "--port=0",
        "--admin-port=0",
        "--stats-interval=0",
        "--proxy-protocol=any",
        "--proxy-protocol-from=127.0.0.1/32",
        f"--proxy-protocol-timeout={HEADER_TIMEOUT_S}",
        "--max-connections-per-ip=2",
        "--shutdown-timeout=30",
        "--banner={peer} {local}",
        *extra,
    )
    listening = process.wait_for("listening")
    process.start()
    return Replica(process, address_of(listening), address_of(listening, "admin_address"))


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(3):
            started.append(start_replica())
        yield started
    finally:
        for replica in started:
            replica.process.stop()


# --- balancers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render_haproxy(port: int, replicas: list[Replica], _: Path) -> str:
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for needed in ("option httpchk GET /readyz", "send-proxy-v2", "    bind :7007\n"):
        assert needed in text, f"deploy/haproxy/haproxy.cfg lost {needed!r}"
    text = text.replace("    bind :7007\n", f"    bind 127.0.0.1:{port}\n")
    for number, replica in enumerate(replicas, 1):
        line = f"    server echo-{number} echo-{number}:7007\n"
        assert line in text
        text = text.replace(line, f"    server echo-{number} {replica.local} port {replica.admin[1]}\n")
    return text


def nginx_module() -> str | None:
    for directory in NGINX_MODULE_DIRS:
        path = Path(directory, "ngx_stream_module.so")
        if path.exists():
            return str(path)
    return None


def render_nginx(port: int, replicas: list[Replica], workdir: Path) -> str:
    text = (DEPLOY / "nginx" / "echo-stream.conf").read_text()
    for needed in ("proxy_protocol on;", "        listen 7007;\n"):
        assert needed in text, f"deploy/nginx/echo-stream.conf lost {needed!r}"
    text = text.replace("        listen 7007;\n", f"        listen 127.0.0.1:{port};\n")
    for number, replica in enumerate(replicas, 1):
        assert f" echo-{number}:7007 " in text
        text = text.replace(f" echo-{number}:7007 ", f" {replica.local} ")
    head = f"load_module {nginx_module()};\npid {workdir}/nginx.pid;\nerror_log stderr notice;\n"
    return head + text


@dataclass(frozen=True)
class Kind:
    name: str
    render: Callable[[int, list[Replica], Path], str]
    argv: Callable[[Path], list[str]]
    ready: str  # a line it prints once listening
    marks_down: bool  # active health checks (HAProxy); nginx OSS only checks passively


HAPROXY = Kind("haproxy", render_haproxy, lambda cfg: ["haproxy", "-W", "-db", "-f", str(cfg)], "Loading success", True)
NGINX = Kind(
    "nginx",
    render_nginx,
    lambda cfg: ["nginx", "-c", str(cfg), "-p", f"{cfg.parent}/", "-g", "daemon off;"],
    "start worker process",
    False,
)


class Balancer:
    """A balancer process; its output lines are read on a thread and waited for."""

    def __init__(self, kind: Kind, replicas: list[Replica], workdir: Path) -> None:
        self.kind = kind
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        for attempt in range(2):  # the free port may be taken before the balancer binds it
            self.port = free_port()
            config = workdir / f"{kind.name}-{attempt}.conf"
            config.write_text(kind.render(self.port, replicas, workdir))
            self.proc = subprocess.Popen(
                kind.argv(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir
            )
            threading.Thread(target=self._read, daemon=True).start()
            line = self.wait_for(f"{kind.ready}|Address already in use|cannot bind|emerg|ALERT", 15)
            if kind.ready in line:
                return
            self.stop()
            if "in use" not in line and "bind" not in line:
                break
        raise AssertionError(f"{kind.name} did not start: {self.lines[-5:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def mark(self) -> int:
        """How many lines have arrived so far: ``wait_for(..., after=mark())`` then
        looks only at the lines that come later."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return len(self.lines)
            if line is None:  # the end of the output: leave it for wait_for
                self._queue.put(None)
                return len(self.lines)
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0) -> str:
        """The first line matching ``pattern``, from line ``after`` on (seen before the
        call or arriving within ``timeout``)."""
        regex = re.compile(pattern)
        for seen in self.lines[after:]:
            if regex.search(seen):
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if regex.search(line):
                return line
        raise AssertionError(f"{self.kind.name}: no line matching {pattern!r}; last: {self.lines[-5:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(params=[HAPROXY, NGINX], ids=lambda kind: kind.name)
def balancer(request: pytest.FixtureRequest, replicas: list[Replica], tmp_path: Path) -> Iterator[Balancer]:
    kind: Kind = request.param
    if shutil.which(kind.name) is None:
        pytest.skip(f"{kind.name} is not installed (Debian: apt-get install {kind.name})")
    if kind is NGINX and nginx_module() is None:
        pytest.skip("nginx's stream module is not installed (Debian: apt-get install libnginx-mod-stream)")
    running = Balancer(kind, replicas, tmp_path)
    try:
        yield running
    finally:
        running.stop()


# --- clients ---------------------------------------------------------------------------------


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def read_banner(sock: socket.socket) -> tuple[str, str] | None:
    """(peer, replica) from the replica's banner line; None if closed before it."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            return None
        line += byte
    peer, replica = line.decode().split()
    return peer, replica


def ping(sock: socket.socket, payload: bytes = b"ping") -> bool:
    """One echo on an open connection; False if the connection failed."""
    try:
        sock.sendall(payload)
        return read_exactly(sock, len(payload)) == payload
    except (OSError, AssertionError):
        return False


@dataclass
class Bench:
    """Client threads opening one connection after another through the balancer, each from
    its own source addresses: banner, 1 KiB echoed, half-close, EOF.

    Each thread opens at most one connection per ``pace_s`` (hundreds a second in all).
    Unpaced, the bench ran about 2,000 connections a second through the balancer; over a
    wait of 15 s, HAProxy's log then showed 1 s connects and health checks timing out on
    healthy replicas, which flapped DOWN and UP while the test watched another."""

    port: int
    threads: int = 4
    pace_s: float = 0.004
    attempted: int = 0
    failed: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when it began, why)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Bench:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, number: int) -> None:
        payload = os.urandom(1024)
        for index in itertools.count():
            if self._stop.is_set():
                return
            source = f"127.1.{number}.{index % 250 + 1}"
            replica = problem = ""
            began = time.monotonic()
            try:
                with connect(self.port, source) as sock:
                    banner = read_banner(sock)
                    if banner is None:
                        problem = "closed before the banner"
                    else:
                        replica = banner[1]
                        sock.sendall(payload)
                        sock.shutdown(socket.SHUT_WR)
                        if read_until_eof(sock) != payload:
                            problem = "echo differs"
            except OSError as error:
                problem = f"{type(error).__name__}: {error}"
            with self._lock:
                self.attempted += 1
                if problem:
                    self.failed += 1
                    self.failures.append((began, problem))
                else:
                    self.served_by[replica] = self.served_by.get(replica, 0) + 1
                self._lock.notify_all()
            self._stop.wait(self.pace_s)  # pacing, not synchronisation: see the class docstring

    def served(self, replica: str) -> int:
        with self._lock:
            return self.served_by.get(replica, 0)

    def wait_until_served(self, replica: str, more_than: int, timeout: float = 15) -> bool:
        """Whether ``replica`` has served more than ``more_than`` connections, waiting up
        to ``timeout``. Under leastconn a replica that holds more of the held connections
        than the others is sent new ones only now and then: how soon is not a count."""
        with self._lock:
            return self._lock.wait_for(lambda: self.served_by.get(replica, 0) > more_than, timeout)

    def failed_since(self, moment: float) -> list[str]:
        with self._lock:
            return [problem for began, problem in self.failures if began >= moment]

    def wait_for_more(self, count: int, timeout: float = 60) -> None:
        with self._lock:
            target = self.attempted + count
            assert self._lock.wait_for(lambda: self.attempted >= target, timeout), "the bench stalled"


def open_held(port: int, count: int) -> list[tuple[socket.socket, str]]:
    """``count`` connections kept open through the balancer, with the replica of each."""
    held = []
    for number in range(count):
        sock = connect(port, f"127.2.0.{number + 1}")
        banner = read_banner(sock)
        assert banner is not None, "a held connection was refused"
        held.append((sock, banner[1]))
    return held


def pick_victim(replicas: list[Replica], held: list[tuple[socket.socket, str]]) -> tuple[int, Replica]:
    """A replica holding one of the held connections, and its number in the config."""
    holding = {replica for _, replica in held}
    number, victim = next((n, r) for n, r in enumerate(replicas, 1) if r.local in holding)
    assert len(holding) >= 2, f"the balancer sent every held connection to one replica: {holding}"
    return number, victim


@contextmanager
def bench_with_victim(
    balancer: Balancer, replicas: list[Replica]
) -> Iterator[tuple[Bench, list[tuple[socket.socket, str]], int, Replica]]:
    """The bench running through the balancer (50 more connections attempted), 6 connections
    held open (closed at the end) and a replica holding one of them, with its number."""
    with Bench(balancer.port) as bench:
        held = open_held(balancer.port, 6)
        try:
            number, victim = pick_victim(replicas, held)
            bench.wait_for_more(50)
            yield bench, held, number, victim
        finally:
            for sock, _ in held:
                sock.close()


def report(record: Callable[[str, object], None], what: str, balancer: Balancer, bench: Bench) -> None:
    print(f"\n{what} via {balancer.kind.name}: {bench.attempted} attempted, {bench.failed} failed, {bench.served_by}")
    record(f"{what}_{balancer.kind.name}_attempted", bench.attempted)
    record(f"{what}_{balancer.kind.name}_failed", bench.failed)


# --- the tests -------------------------------------------------------------------------------


def test_echo_through_the_balancer_shows_the_client_and_limits_it_by_its_address(
    balancer: Balancer, replicas: list[Replica]
) -> None:
    with connect(balancer.port, "127.0.0.2") as sock:
        client = f"127.0.0.2:{sock.getsockname()[1]}"
        banner = read_banner(sock)
        assert banner is not None and banner[0] == client
        assert ping(sock, b"hello through " + balancer.kind.name.encode())
        replica = next(r for r in replicas if r.local == banner[1])
        opened = replica.process.wait_for("opened", peer=client)
        assert opened["via"].startswith("127.0.0.1:")
    closed = replica.process.wait_for("closed", peer=client)
    assert closed["via"] == opened["via"] and closed["reason"] == "eof"

    # --max-connections-per-ip 2 on each of 3 replicas: 127.0.0.3 gets 6 places in all,
    # whatever the balancer's own address; a 7th is refused, and another client still gets in.
    held = [connect(balancer.port, "127.0.0.3") for _ in range(7)]
    try:
        banners = [read_banner(sock) for sock in held]
        assert sum(b is not None for b in banners) == 6
        refused_on = [r for r in replicas if r.rejected("max_connections_per_ip")]
        assert len(refused_on) == 1
        rejected = refused_on[0].process.wait_for("rejected", reason="max_connections_per_ip")
        assert rejected["peer"].startswith("127.0.0.3:") and rejected["via"].startswith("127.0.0.1:")
        with connect(balancer.port, "127.0.0.4") as other:
            assert read_banner(other) is not None and ping(other)
    finally:
        for sock in held:
            sock.close()


def test_sigterm_drains_one_replica_without_failing_a_new_connection(
    balancer: Balancer, replicas: list[Replica], record_property: Callable[[str, object], None]
) -> None:
    with bench_with_victim(balancer, replicas) as (bench, held, number, victim):
        before_signal = balancer.mark()
        victim.process.signal(signal.SIGTERM)
        victim.process.wait_for("stopping")
        assert victim.readyz() == 503
        if balancer.kind.marks_down:
            balancer.wait_for(f"echo-{number} is DOWN", 10, after=before_signal)
        served_before = bench.served(victim.local)
        bench.wait_for_more(300)
        assert bench.served(victim.local) <= served_before + bench.threads  # at most those in flight at the signal

        # Open connections to the draining replica are still echoed, and close cleanly.
        for sock, _ in held:
            assert ping(sock, b"still here")
            sock.shutdown(socket.SHUT_WR)
            assert read_until_eof(sock) == b""
            sock.close()
    report(record_property, "drain", balancer, bench)
    assert bench.failed == 0, bench.failures[:5]
    assert victim.process.finish(20) == 0
    assert victim.process.wait_for("closed", reason="eof")


def test_kill_9_fails_only_that_replicas_connections(
    balancer: Balancer, replicas: list[Replica], record_property: Callable[[str, object], None]
) -> None:
    with bench_with_victim(balancer, replicas) as (bench, held, number, victim):
        before_kill = balancer.mark()
        killed_at = time.monotonic()
        victim.process.proc.kill()
        victim.process.proc.wait(10)
        dead_at = time.monotonic()
        for sock, replica in held:
            assert ping(sock) == (replica != victim.local), replica
            sock.close()
        if balancer.kind.marks_down:
            balancer.wait_for(f"echo-{number} is DOWN", 10, after=before_kill)
            assert time.monotonic() - killed_at < 2 * 1.0 + 2.0 + 3.0  # fall 2 x inter 1 s + timeout check
        bench.wait_for_more(300)
    report(record_property, "kill9", balancer, bench)
    # Connections the bench had open on the victim when it died may fail: they were its own.
    assert bench.failed <= bench.threads, bench.failures[:5]
    assert bench.failed_since(dead_at) == []


# --- headers the replicas refuse (one real process each: the rejected event is throttled) ----


@pytest.mark.parametrize(
    ("case", "detail"),
    [("untrusted", "untrusted"), ("malformed", "malformed"), ("truncated", "truncated"), ("slow", "late")],
)
def test_a_bad_or_untrusted_header_is_rejected_by_a_real_replica(case: str, detail: str) -> None:
    replica = start_replica()
    try:
        source = "127.0.0.9" if case == "untrusted" else "127.0.0.1"
        with socket.create_connection(replica.address, timeout=10, source_address=(source, 0)) as sock:
            started = time.monotonic()
            if case in ("untrusted", "malformed"):
                sock.sendall(b"PROXY TCP4 192.0.2.1 10.0.0.1 1 7007\r\n" if case == "untrusted" else b"HELLO\r\n")
            elif case == "truncated":
                sock.sendall(b"PROXY TCP4 192.0.2.1 10.0")
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(b"PROXY ")  # and nothing more
            assert wait_readable(sock, 10)
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
            elapsed = time.monotonic() - started
        rejected = replica.process.wait_for("rejected", reason="proxy_protocol")
        assert rejected["detail"] == detail and rejected["peer"].startswith(source)
        if case == "slow":
            assert HEADER_TIMEOUT_S * 0.9 < elapsed < HEADER_TIMEOUT_S + 3
        replica.process.signal(signal.SIGTERM)
        assert replica.process.finish() == 0
        assert not any(line.get("event") == "opened" for line in replica.process.seen)
        assert "Traceback" not in replica.process.stderr()
    finally:
        replica.process.stop()
