"""``python3 -m server`` as a real subprocess: settings, exit codes, signals, abuse."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import AnyStr

import pytest

from server.core import FINAL_FLUSH_S, STOP_MARGIN_S
from tests.helpers import ROOT, JsonLines, ServerProcess, address_of, read_exactly, read_until_eof, run_cli

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def server_process() -> Iterator[StartServer]:
    processes: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        process = ServerProcess("--port", "0", "--admin-port", "off", *args, env=env)
        processes.append(process)
        return process.start()

    yield start
    for process in processes:
        process.stop()


@contextmanager
def reaped(process: subprocess.Popen[AnyStr]) -> Iterator[subprocess.Popen[AnyStr]]:
    """Kill the process if the test left it running; close its pipes."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()


def test_help_lists_every_setting_with_env_and_default() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    for text in (
        "--max-connections",
        "ECHO_MAX_CONNECTIONS",
        "default 10000",
        "--idle-timeout",
        "ECHO_IDLE_TIMEOUT",
        "default 300.0 s",
        "--host",
        "default 127.0.0.1",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "70000"], {}, "--port"),
        ([], {"ECHO_PORT": "abc"}, "ECHO_PORT"),
        (["--idle-timeout", "-1"], {}, "--idle-timeout"),
        (["--shutdown-timeout", "soon"], {}, "--shutdown-timeout"),
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"ECHO_MAX_CONNECTIONS": "0"}, "ECHO_MAX_CONNECTIONS"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--log-file", "/nonexistent-dir/echo.log"], {}, "--log-file"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args: list[str], env: dict[str, str], named: str) -> None:
    result = run_cli(args, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_a_flag_wins_over_the_environment(server_process: StartServer) -> None:
    process = server_process("--max-connections", "7", env={"ECHO_MAX_CONNECTIONS": "3", "ECHO_LOOPS": "2"})
    started = process.wait_for("started")
    assert started["max_connections"] == 7
    assert started["loops"] == 2


def test_port_in_use_exits_1_with_a_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli(["--port", str(taken.getsockname()[1]), "--admin-port", "off"])
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_admin_port_in_use_says_admin_port_and_how_to_avoid_it() -> None:
    """Two instances on one host: the second one's echo port is free, its admin port not."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        result = run_cli(["--port", "0", "--admin-port", str(admin_port)])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{admin_port} (the admin port): Address already in use" in lines[0]
    assert "--admin-port 0" in lines[0] and "--admin-port off" in lines[0]


def test_sigterm_under_load_echoes_every_byte_read_and_exits_0(server_process: StartServer) -> None:
    process = server_process("--shutdown-timeout", "0.5")
    clients = 20
    received: dict[int, bytes] = {}
    sent: dict[int, bytes] = {}
    ports: dict[int, int] = {}
    streaming = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        payload = os.urandom(4 << 20)
        with socket.create_connection(process.address, timeout=30) as sock:
            ports[index] = sock.getsockname()[1]

            def write() -> None:
                view = memoryview(payload)
                try:
                    for start in range(0, len(view), 16384):
                        sock.sendall(view[start : start + 16384])
                        if start == 16384 * 4:
                            streaming.wait(30)
                except OSError:
                    pass  # the server stopped reading and closed: expected

            writer = threading.Thread(target=write)
            writer.start()
            received[index] = read_until_eof(sock)
            sock.shutdown(socket.SHUT_RDWR)
            writer.join(30)
        sent[index] = payload

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    streaming.wait(30)  # every client is mid-stream
    process.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert process.finish() == 0
    closed = {r["peer"]: r for r in process.seen if r["event"] == "closed"}
    for index in range(clients):
        echoed = received[index]
        assert echoed == sent[index][: len(echoed)], "echo is not a byte-exact prefix of what was sent"
        record = closed[f"127.0.0.1:{ports[index]}"]
        assert record["bytes_in"] == record["bytes_out"] == len(echoed), "a byte read was not echoed"
    stopped = process.wait_for("stopped")
    assert stopped["accepted"] == clients and stopped["active"] == 0


def test_second_signal_exits_1_at_once(server_process: StartServer) -> None:
    process = server_process("--shutdown-timeout", "60")
    with socket.create_connection(process.address, timeout=10) as held:
        held.sendall(b"keep me open")
        read_exactly(held, 12)
        process.signal(signal.SIGTERM)
        process.wait_for("stopping")
        process.signal(signal.SIGINT)
        assert process.finish(timeout=5) == 1


def test_never_reading_client_sending_64_mib_is_closed_with_bounded_memory(server_process: StartServer) -> None:
    process = server_process("--write-stall-timeout", "0.5")
    rss_before = process.rss_kib()
    total = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(process.address)
        sock.settimeout(20)
        chunk = os.urandom(1 << 20)
        try:
            while total < 64 << 20:
                total += sock.send(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        closed = process.wait_for("closed")
    assert closed["reason"] == "write_stall"
    assert total < 64 << 20, "the server should close the connection before taking 64 MiB"
    grown_kib = process.rss_kib() - rss_before
    assert grown_kib < 16 * 1024, f"server RSS grew by {grown_kib} KiB for one stalled client"


def test_max_connections_above_the_fd_limit_is_clamped_once() -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--port",
            "0",
            "--admin-port",
            "off",
            "--log-format",
            "json",
            "--max-connections",
            "5000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_limit,
    )
    with reaped(process):
        assert process.stdout is not None
        log = JsonLines(process.stdout)  # bounded waits, not a blocking readline()
        log.wait_for("ready")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        records = log.finish(15)
    text = json.dumps(records)
    assert text.count("RLIMIT_NOFILE") == 1
    clamped = re.search(r"using max_connections (\d+)", text)
    assert clamped is not None and 0 < int(clamped[1]) < 200  # below the limit, less the server's own share
    assert records[-1]["event"] == "stopped"


def test_accept_pauses_on_emfile_and_recovers(server_process: StartServer) -> None:
    process = server_process("--max-connections", "100")
    soft, hard = resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE)
    open_fds = len(os.listdir(f"/proc/{process.proc.pid}/fd"))
    resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (open_fds + 3, hard))
    clients = []
    try:
        for _ in range(10):  # more than the descriptors left: accept() hits EMFILE
            clients.append(socket.create_connection(process.address, timeout=10))
        process.wait_for("accept_paused")
        for sock in clients:
            sock.close()
        clients.clear()
        resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        with socket.create_connection(process.address, timeout=10) as sock:
            sock.sendall(b"recovered")
            assert read_exactly(sock, 9) == b"recovered"
        process.wait_for("accept_resumed")
    finally:
        for sock in clients:
            sock.close()
    process.signal(signal.SIGTERM)
    assert process.finish() == 0
    warnings = [r for r in process.seen if r["event"] == "log" and "accept() failed" in r.get("message", "")]
    assert 1 <= len(warnings) <= 3  # at most once a second, not once per failure
    assert not any("Traceback" in r.get("exc", "") for r in process.seen)


def test_sigint_stops_gracefully_like_sigterm(server_process: StartServer) -> None:
    process = server_process()
    with socket.create_connection(process.address, timeout=10) as sock:
        sock.sendall(b"before ^C")
        assert read_exactly(sock, 9) == b"before ^C"
        process.signal(signal.SIGINT)
        assert read_until_eof(sock) == b""  # drained and closed with FIN, not reset
    assert process.finish() == 0
    assert process.seen[-1]["event"] == "stopped"


def test_a_misspelt_environment_variable_is_named_with_a_suggestion(server_process: StartServer) -> None:
    process = server_process(env={"ECHO_MAX_CONECTIONS": "5"})
    warning = process.wait_for("log", level="warning")
    assert warning["message"] == (
        "ignoring environment variable ECHO_MAX_CONECTIONS: no such setting; did you mean ECHO_MAX_CONNECTIONS?"
    )


# Run the CLI with a bug injected after start: the acceptor task raising on its first
# connection, or scheduler loop-0 raising (or blocking for good) in the loop turn that
# started a connection (outside any task: the thread itself dies or wedges).
_INJECT = {
    "acceptor": """
from server.engine import acceptor
def broken(self, accept):
    raise RuntimeError("injected bug")
    yield
acceptor.Acceptor._accept_batch = broken
""",
    "scheduler": """
from server.engine import scheduler
from server.engine.connection import Connection
turn = scheduler.Scheduler._turn
def broken(self, block, once):
    while True:  # one turn at a time, then the check
        alive = turn(self, block, True)
        if self.name == "loop-0" and any(isinstance(task.state, Connection) for task in self.tasks()):
            raise RuntimeError("injected bug")
        if once or not alive:
            return alive
scheduler.Scheduler._turn = broken
""",
    "wedged": """
import threading
from server.engine import scheduler
from server.engine.connection import Connection
turn = scheduler.Scheduler._turn
def wedged(self, block, once):
    while True:  # one turn at a time, then the check
        alive = turn(self, block, True)
        if self.name == "loop-0" and any(isinstance(task.state, Connection) for task in self.tasks()):
            threading.Event().wait()
        if once or not alive:
            return alive
scheduler.Scheduler._turn = wedged
""",
}


def _cli_with_bug(bug: str, shutdown_timeout: str) -> subprocess.Popen[str]:
    """The CLI (JSON log on stdout, no admin) in a subprocess with ``_INJECT[bug]`` applied."""
    code = _INJECT[bug] + "import sys\nfrom server import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    args = ["--port", "0", "--admin-port", "off", "--log-format", "json", "--shutdown-timeout", shutdown_timeout]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("dies", ["acceptor", "scheduler"])
def test_a_dead_server_thread_stops_gracefully_with_exit_1(dies: str) -> None:
    process = _cli_with_bug(dies, shutdown_timeout="1")
    with reaped(process):
        assert process.stdout is not None and process.stderr is not None
        log = JsonLines(process.stdout)
        address = address_of(log.wait_for("ready"))
        try:
            with socket.create_connection(address, timeout=10):  # the bug fires on this one
                log.wait_for("stopping", timeout=10)
        except ConnectionError:  # the dead acceptor closed its listener before connect() returned
            log.wait_for("stopping", timeout=10)
        assert process.wait(15) == 1
        records = log.finish(15)
        errors = process.stderr.read()
    tracebacks = [r for r in records if "Traceback" in r.get("exc", "")]
    assert len(tracebacks) == 1 and "RuntimeError: injected bug" in tracebacks[0]["exc"], records
    said = [r["message"] for r in records if r.get("logger") == "echo.cli" and r["level"] == "error"]
    assert said == ["a server thread failed (RuntimeError): stopping, exit status will be 1"]
    assert records[-1]["event"] == "stopped"
    assert "Traceback" not in errors, errors


@pytest.mark.slow
def test_a_scheduler_stuck_in_a_bug_does_not_hang_the_exit() -> None:
    """shutdown() gives up on it after its margin; exiting must not then join it forever."""
    process = _cli_with_bug("wedged", shutdown_timeout="0.5")
    with reaped(process):
        assert process.stdout is not None and process.stderr is not None
        log = JsonLines(process.stdout)
        address = address_of(log.wait_for("ready"))
        with socket.create_connection(address, timeout=10):  # started on loop-0, which then blocks
            log.wait_for("opened")
        process.send_signal(signal.SIGTERM)
        assert process.wait(0.5 + FINAL_FLUSH_S + 2 * STOP_MARGIN_S + 5) == 1  # today: never exits
        records = log.finish(15)
        errors = process.stderr.read()
    assert any("did not stop in time" in r.get("message", "") for r in records), records
    assert records[-1]["event"] == "stopped"
    assert errors.startswith("echo-server: not waiting for stuck threads echo_") and "Traceback" not in errors
