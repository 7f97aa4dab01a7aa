"""The server's lifecycle under faults and races: a dead thread is noticed, and
"ready" is never published after "stopping"."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from server import listeners as listeners_module
from server.config import Config
from server.core import EchoServer
from server.engine.acceptor import Acceptor
from server.engine.connection import Connection
from server.engine.pipeline import Pipeline
from server.engine.scheduler import Scheduler
from server.observe.exchange import Exchange
from tests.helpers import EventRecorder, read_exactly, read_until_eof


def break_loop(loop: Scheduler, error: Exception) -> None:
    """Make the loop's own code (not a task's) raise ``error`` at its next turn: its
    inbox drain is swapped for one that raises, and the loop woken again from inside
    the drain that swaps it, so the broken one surely runs."""

    def broken_drain() -> None:
        raise error

    def swap() -> None:
        loop._drain_inbox = broken_drain  # type: ignore[method-assign]
        loop._wake()

    loop.call_soon_threadsafe(swap)


class ErrorLog(logging.Handler):
    """Collects what the server logs at ERROR (these tests expect exactly one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logging.getLogger("echo").addHandler(handler)
    yield handler
    logging.getLogger("echo").removeHandler(handler)


def start_server(**settings: object) -> tuple[EchoServer, EventRecorder, threading.Event, list[BaseException]]:
    recorder = EventRecorder()
    exchange = Exchange("lifecycle-test")
    exchange.attach(recorder)
    settings = {"port": 0, "admin_port": None, "stats_interval": 0, **settings}
    config = Config(**settings)  # type: ignore[arg-type]
    server = EchoServer(config, exchange=exchange)
    failed = threading.Event()
    failures: list[BaseException] = []

    def on_failure(error: BaseException) -> None:
        failures.append(error)
        failed.set()

    server.add_failure_callback(on_failure)
    server.start()
    assert server.ready.wait(5)
    return server, recorder, failed, failures


def _healthz(server: EchoServer) -> int:
    assert server.admin is not None
    host, port = server.admin.address[:2]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_scheduler_that_dies_is_reported_once_and_unhealthy(error_log: ErrorLog) -> None:
    server, recorder, failed, failures = start_server(admin_port=0, admin_host="127.0.0.1")
    try:
        assert server.healthy and _healthz(server) == 200
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            sock.sendall(b"before")
            assert read_exactly(sock, 6) == b"before"
            loop = server._loops[0]

            break_loop(loop, RuntimeError("injected scheduler fault"))
            assert failed.wait(5), "the failure callback was not called"
            # The dead scheduler's connections are closed (reset), not left hanging.
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        assert [str(f) for f in failures] == ["injected scheduler fault"]
        assert not server.healthy and not server.ready.is_set()
        assert _healthz(server) == 503
        event = recorder.wait_for(lambda e: e.name == "failed")
        assert "loop-0" in event.data["reason"] and event.level == "error"
        tracebacks = [r for r in error_log.records if r.exc_info]
        assert len(tracebacks) == 1 and "injected scheduler fault" in str(tracebacks[0].exc_info)
    finally:
        server.shutdown()
    assert len(failures) == 1  # the stop is not a second failure


def test_a_task_that_dies_of_a_bug_is_counted_as_an_error_and_the_server_goes_on(
    error_log: ErrorLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    bug = threading.Event()
    bug.set()

    def buggy_step(sock: socket.socket, conn: Connection) -> Generator[Any, None, None]:
        if bug.is_set():
            # The bug: the step yields something that is no Wait, so the scheduler throws a
            # TypeError into it, where the task's own code was running.
            yield "not a Wait"

    build = listeners_module.pipeline_for

    def with_a_buggy_step(*args: Any) -> Pipeline:
        pipeline = build(*args)
        return dataclasses.replace(pipeline, steps=(buggy_step, *pipeline.steps))

    monkeypatch.setattr(listeners_module, "pipeline_for", with_a_buggy_step)
    server, recorder, _, failures = start_server()
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            assert read_until_eof(sock) == b""  # closed, neither echoed nor left hanging
        closed = recorder.wait_for(lambda e: e.name == "closed")
        assert closed.data["reason"] == "error" and closed.level == "warning"
        stats = server.stats.snapshot()
        assert stats.errors == 1 and stats.closed_by_reason == {"error": 1} and stats.active == 0
        tracebacks = [r for r in error_log.records if r.exc_info]
        assert len(tracebacks) == 1 and "not a Wait" in tracebacks[0].getMessage() + str(tracebacks[0].exc_info)
        bug.clear()
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            sock.sendall(b"after")
            assert read_exactly(sock, 5) == b"after"  # one task's bug is that task's end only
        assert server.healthy and not failures
    finally:
        server.shutdown()


def test_an_acceptor_that_dies_is_reported_with_its_traceback(
    error_log: ErrorLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_admit(self: Acceptor, sock: socket.socket, address: tuple[object, ...]) -> None:
        sock.close()
        raise RuntimeError("injected acceptor fault")

    monkeypatch.setattr(Acceptor, "_admit", broken_admit)
    server, recorder, failed, failures = start_server()
    try:
        socket.create_connection(server.server_address[:2], timeout=5).close()
        assert failed.wait(5)
        assert not server.healthy
        assert "Acceptor.run" in recorder.wait_for(lambda e: e.name == "failed").data["reason"]
        tracebacks = [r for r in error_log.records if r.exc_info]
        assert len(tracebacks) == 1 and "injected acceptor fault" in str(tracebacks[0].exc_info)
    finally:
        server.shutdown()
    assert len(failures) == 1


def test_a_callback_added_after_the_failure_still_hears_of_it(error_log: ErrorLog) -> None:
    server, _, failed, _ = start_server()
    try:
        loop = server._loops[0]
        break_loop(loop, RuntimeError("early fault"))
        assert failed.wait(5)
        late: list[BaseException] = []
        server.add_failure_callback(late.append)
        assert [str(e) for e in late] == ["early fault"]
    finally:
        server.shutdown()


def test_a_clean_stop_is_no_failure(error_log: ErrorLog) -> None:
    server, _, failed, _ = start_server()
    server.shutdown()
    assert not failed.is_set() and server.healthy and error_log.records == []


def test_ready_is_never_published_after_stopping_in_rapid_start_stop_cycles() -> None:
    late = 0
    for _ in range(1_000):
        recorder = EventRecorder()
        exchange = Exchange("race-test")
        exchange.attach(recorder)
        server = EchoServer(Config(port=0, admin_port=None, stats_interval=0), exchange=exchange)
        server.start()
        server.shutdown()
        names = [e.name for e in recorder.events]
        if server.ready.is_set() or ("ready" in names and names.index("ready") > names.index("stopping")):
            late += 1
    assert late == 0


def test_an_acceptor_scheduler_that_dies_is_logged_with_its_own_exception(error_log: ErrorLog) -> None:
    server, _, failed, failures = start_server()
    try:
        loop = server._acceptor_loop
        assert loop is not None
        break_loop(loop, RuntimeError("acceptor turn fault"))
        assert failed.wait(5)
        assert [str(f) for f in failures] == ["acceptor turn fault"]
        tracebacks = [r for r in error_log.records if r.exc_info]
        assert len(tracebacks) == 1 and "acceptor turn fault" in str(tracebacks[0].exc_info)
    finally:
        server.shutdown()


def test_a_second_failure_is_logged_too_but_called_back_once(error_log: ErrorLog) -> None:
    server, _, failed, failures = start_server(loops=2)
    try:
        for index, loop in enumerate(server._loops):
            break_loop(loop, RuntimeError(f"fault {index}"))
        assert failed.wait(5)
        deadline = time.monotonic() + 5
        while len([r for r in error_log.records if r.exc_info]) < 2 and time.monotonic() < deadline:
            failed.wait(0.01)  # the second scheduler dies on its own thread, a moment later
        logged = sorted(str(r.exc_info[1]) for r in error_log.records if r.exc_info)
        assert logged == ["fault 0", "fault 1"]
        assert len(failures) == 1
    finally:
        server.shutdown()
