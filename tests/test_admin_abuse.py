"""The admin port under abuse: tricklers, stream hogs, stalled readers, EMFILE, and a
stop with the worst company attached (real sockets; real subprocesses for signals)."""

from __future__ import annotations

import http.client
import logging
import os
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.core import STOP_BUDGET_S, EchoServer
from server.observe import admin as admin_module
from server.observe.events import event
from tests.conftest import ServerFactory
from tests.helpers import ServerProcess, address_of, read_until_eof
from tests.test_admin import admin_of

TICKS = os.sysconf("SC_CLK_TCK")
SENDING = ("poll_schedule_timeout", "sk_stream_wait_memory")  # where a thread waits in sendall


def healthz(address: tuple[str, int], timeout: float = 5.0) -> int:
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def open_stream(address: tuple[str, int]) -> tuple[socket.socket, bytes]:
    """An /events request on a socket that reads only the status line's first bytes."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock, sock.recv(12)  # b"HTTP/1.1 200" or b"HTTP/1.1 503"


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a process or thread, from /proc/.../stat."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Trickler:
    """Sockets that send a partial request, then one more byte every ``interval`` s."""

    def __init__(self, address: tuple[str, int], count: int, interval: float = 0.2) -> None:
        self.socks = [socket.create_connection(address, timeout=10) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):  # pacing the abuse, not synchronizing
            for sock in self.socks:
                try:
                    sock.send(b"x")
                except OSError:
                    pass  # dropped by the server: what the tests want

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


class AdminLogCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def admin_warnings() -> Iterator[AdminLogCount]:
    handler = AdminLogCount()
    logger = logging.getLogger("echo.admin")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_trickler_is_dropped_at_the_request_deadline(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_module, "REQUEST_DEADLINE_S", 1.0)
    server, _ = make_server(admin_port=0)
    trickler = Trickler(admin_of(server), 1, interval=0.1)
    try:
        started = time.monotonic()
        sock = trickler.socks[0]
        sock.settimeout(6)
        try:
            assert read_until_eof(sock) == b""
        except ConnectionResetError:
            pass  # closed while our bytes were arriving: dropped all the same
        assert time.monotonic() - started < 3.0
    finally:
        trickler.close()


def test_healthz_answers_while_tricklers_and_streams_hold_the_port(
    make_server: ServerFactory, admin_warnings: AdminLogCount
) -> None:
    server, _ = make_server(admin_port=0)
    address = admin_of(server)
    admin_thread = next(t for t in threading.enumerate() if t.name == "admin")
    admin_stat = Path(f"/proc/self/task/{admin_thread.native_id}/stat")
    cpu_before, started = cpu_seconds(admin_stat), time.monotonic()
    streams = [open_stream(address) for _ in range(admin_module.MAX_STREAMS)]
    extra = [open_stream(address) for _ in range(4)]
    trickler = Trickler(address, admin_module.MAX_CLIENTS + 8)
    try:
        for _ in range(5):
            probe_started = time.monotonic()
            assert healthz(address) == 200
            assert time.monotonic() - probe_started < 2.0
        assert [status for _, status in streams] == [b"HTTP/1.1 200"] * admin_module.MAX_STREAMS
        assert [status for _, status in extra] == [b"HTTP/1.1 503"] * 4
        late, status = open_stream(address)
        late.close()
        assert status == b"HTTP/1.1 503"  # the streams are still all there
        elapsed = time.monotonic() - started
        assert cpu_seconds(admin_stat) - cpu_before < 0.5 * elapsed + 0.2  # no busy loop
        for sock, _ in streams:  # the readers stayed attached throughout
            assert sock.fileno() >= 0
    finally:
        trickler.close()
        for sock, _ in streams + extra:
            sock.close()
    elapsed = time.monotonic() - started
    for kind in ("refused one more", "to make room"):
        said = [m for m in admin_warnings.messages if kind in m]
        assert 1 <= len(said) <= elapsed + 1, (kind, admin_warnings.messages)


def test_a_stream_that_hangs_up_frees_its_slot(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "MAX_STREAMS", 1)
    server, _ = make_server(admin_port=0)
    first, status = open_stream(admin_of(server))
    assert status == b"HTTP/1.1 200"
    first.close()  # no event is published: only the hang-up can free the slot
    deadline = time.monotonic() + 5
    while True:
        second, status = open_stream(admin_of(server))
        second.close()
        if status == b"HTTP/1.1 200":
            break
        assert time.monotonic() < deadline, "the slot was never freed"


def attach_reader_that_never_reads(server: EchoServer) -> tuple[socket.socket, threading.Thread]:
    """An /events reader with a tiny receive buffer, and the server thread serving it."""
    threads_before = set(threading.enumerate())
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.settimeout(10)
    reader.connect(admin_of(server))
    reader.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    reader.recv(1, socket.MSG_PEEK)  # headers are on their way: the watcher is attached
    (handler,) = set(threading.enumerate()) - threads_before
    return reader, handler


def test_a_stalled_events_reader_is_disconnected(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    reader, handler = attach_reader_that_never_reads(server)
    with reader:
        published = 0
        while handler.is_alive() and published < 20_000:
            for _ in range(100):
                server.publish(event("opened", conn_id=published, peer="203.0.113.9:1"))
                published += 1
            assert healthz(admin_of(server)) == 200  # paces us like any other admin client
        handler.join(3)
        assert not handler.is_alive(), f"still streaming to a reader that read nothing after {published} events"
        assert published <= 5 * admin_module.WATCHER_QUEUE
        assert server.exchange.subscriber_count == 1  # only the test's recorder is left


def test_emfile_pauses_the_admin_accept_loop(tmp_path: Path) -> None:
    server = ServerProcess("--port", "0", "--admin-port", "0").start()
    try:
        admin = address_of(server.wait_for("listening"), "admin_address")
        pid = server.proc.pid
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        open_fds = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)
        original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))  # the next fd is EMFILE
        with socket.create_connection(admin, timeout=10) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = wait_for_pause_warning(server)
            cpu_first = cpu_seconds(Path(f"/proc/{pid}/stat"))
            wait_for_pause_warning(server)  # a second later at the earliest
            window = time.monotonic() - first
            cpu = cpu_seconds(Path(f"/proc/{pid}/stat")) - cpu_first
            assert window >= 0.9 and cpu < 0.25 * window, (cpu, window)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
            assert probe.recv(12) == b"HTTP/1.1 200"  # served once descriptors are back
        server.signal(signal.SIGTERM)
        assert server.finish() == 0
    finally:
        server.stop()


def wait_for_pause_warning(server: ServerProcess, timeout: float = 10.0) -> float:
    """Read log lines until the next admin accept-pause warning; returns when it came."""
    deadline = time.monotonic() + timeout
    while True:
        line = server.log.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, "the log ended"
        record = server.log._take(line)
        if record is not None and "accept() failed" in str(record.get("message")):
            return time.monotonic()


def _owe_an_echo_that_is_never_read(address: tuple[str, int]) -> socket.socket:
    """A client that sends until both directions' buffers are full and reads nothing:
    the server can neither finish its echo nor read more, so the drain lasts until the
    final flush gives up on it."""
    sock = socket.create_connection(address, timeout=10)
    sock.setblocking(False)
    chunk = bytes(65536)
    try:
        for _ in range(4096):  # bounded: the kernel's buffers fill long before 256 MiB
            sock.send(chunk)
            if not wait_writable(sock, 0.5):
                break
    except BlockingIOError:
        pass
    return sock


def wait_writable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        return bool(selector.select(timeout))


def test_stop_is_bounded_with_the_worst_admin_company() -> None:
    shutdown_timeout = 0.2
    server = ServerProcess(
        "--port", "0", "--admin-port", "0", "--shutdown-timeout", str(shutdown_timeout),
        "--max-connections-per-ip", "5000",
    ).start()  # fmt: skip
    clients: list[socket.socket] = []
    done = threading.Event()
    reader: threading.Thread | None = None
    readers = selectors.DefaultSelector()
    try:
        admin = address_of(server.wait_for("listening"), "admin_address")
        for index in range(admin_module.MAX_STREAMS):  # half read their stream, half never do
            sock, status = open_stream(admin)
            assert status == b"HTTP/1.1 200"
            clients.append(sock)
            if index % 2:
                readers.register(sock, selectors.EVENT_READ)
        for _ in range(admin_module.MAX_CLIENTS - admin_module.MAX_STREAMS):  # keep-alive: one request, then idle
            sock = socket.create_connection(admin, timeout=10)
            clients.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            readers.register(sock, selectors.EVENT_READ)
        for _ in range(2000):
            sock = socket.create_connection(server.address, timeout=10)
            clients.append(sock)
            readers.register(sock, selectors.EVENT_READ)
        server.wait_for("opened", conn=2000)
        reader = threading.Thread(target=close_on_eof, args=(readers, done), daemon=True)
        reader.start()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.proc.wait(shutdown_timeout + 5)
        took = time.monotonic() - started
        assert code == 0 and took < shutdown_timeout + 1.5, (code, took, server.stderr())
    finally:
        done.set()
        if reader is not None:
            reader.join(10)
        else:
            readers.close()
        for sock in clients:
            sock.close()
        server.stop()


def close_on_eof(readers: selectors.BaseSelector, done: threading.Event) -> None:
    """Well-behaved clients: read what comes, close at EOF (keeps the echo drain short)."""
    while not done.is_set() and readers.get_map():
        for key, _ in readers.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                readers.unregister(sock)
                sock.close()
    readers.close()


def test_the_stop_closes_idle_keep_alive_connections_at_once(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    idle = [http.client.HTTPConnection(*admin_of(server), timeout=10) for _ in range(3)]
    try:
        for connection in idle:  # one request each, then the connection waits for the next
            connection.request("GET", "/healthz")
            connection.getresponse().read()
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
    finally:
        for connection in idle:
            connection.close()


def _stall_a_stream(server: EchoServer) -> tuple[socket.socket, threading.Thread]:
    """An /events reader that never reads, its handler blocked in a send (buffers full)."""
    reader, handler = attach_reader_that_never_reads(server)
    for index in range(admin_module.WATCHER_QUEUE * 4 // 5):  # the buffers fill, the queue does not
        server.publish(event("opened", conn_id=index, peer="203.0.113.9:1"))
    wchan = Path(f"/proc/self/task/{handler.native_id}/wchan")
    for _ in range(100):  # each probe gives the handler time to fill the buffers
        assert healthz(admin_of(server)) == 200
        if wchan.read_text().startswith(SENDING):
            break
    assert wchan.read_text().startswith(SENDING), "the handler never blocked in a send"
    return reader, handler


def test_the_stop_cuts_a_stalled_stream_at_its_deadline(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    reader, handler = _stall_a_stream(server)
    with reader:
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < admin_module.CLOSE_TIMEOUT_S + 0.5
        assert not handler.is_alive()


def test_one_deadline_bounds_the_stop_when_the_flush_and_a_stream_are_both_stuck(
    make_server: ServerFactory,
) -> None:
    """The admin's close gets what is left of shutdown_timeout + STOP_BUDGET_S, not a
    budget of its own after the final flush (that took 0.2 + 1.0 + 0.8 s here)."""
    server, _ = make_server(admin_port=0, shutdown_timeout=0.2)
    owed = _owe_an_echo_that_is_never_read(server.server_address[:2])
    reader, handler = _stall_a_stream(server)
    with owed, reader:
        started = time.monotonic()
        server.shutdown()
        took = time.monotonic() - started
        assert took < 0.2 + STOP_BUDGET_S + 0.3, f"the stop took {took:.2f} s"
        assert not handler.is_alive()
