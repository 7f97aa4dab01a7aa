"""Fixtures: in-process servers on ephemeral ports, with leak and error checks."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.config import Config
from server.core import EchoServer
from server.engine.scheduler import Scheduler
from server.observe.exchange import Exchange
from tests.helpers import EventRecorder, FakeClock
from tests.pki import pki  # noqa: F401  (a fixture: the TLS tests share one throwaway PKI per module)


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


ServerFactory = Callable[..., tuple[EchoServer, EventRecorder]]

# .ci/run installs every real peer the tests use (nc, ncat, socat, openssl, haproxy,
# nginx, promtool, prometheus, chromium, checkov, a C compiler) and sets REQUIRE_PEERS=1:
# there a test skipped for a missing tool is a broken install, and fails. These skips
# are facts of the machine, not of the install, and stay skips.
MACHINE_SKIPS = ("somaxconn", "dual-stack", "needs root", "one CPU")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("REQUIRE_PEERS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(fact in reason for fact in MACHINE_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"REQUIRE_PEERS=1, but this test was skipped: {reason}"


@pytest.fixture(autouse=True, scope="session")
def no_gevent_patching() -> Iterator[None]:
    """Importing locust monkey-patches threads and sockets with gevent for the whole
    process; the Locust tests run it in subprocesses. Fail loudly if that changes."""
    yield
    assert "locust" not in sys.modules, "a test imported locust in-process (gevent monkey-patching)"


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Start EchoServers on 127.0.0.1:0; at teardown stop them and check that no
    thread or file descriptor leaked and nothing was logged at ERROR."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    errors = _ErrorCollector()
    logging.getLogger("echo").addHandler(errors)
    servers: list[EchoServer] = []

    def factory(**settings: Any) -> tuple[EchoServer, EventRecorder]:
        settings.setdefault("port", 0)
        settings.setdefault("admin_port", None)
        settings.setdefault("stats_interval", 0)
        recorder = EventRecorder()
        exchange = Exchange("test-events")
        exchange.attach(recorder)
        server = EchoServer(Config(**settings), exchange=exchange)
        servers.append(server)
        server.start()
        assert server.ready.wait(5), "server did not become ready"
        return server, recorder

    yield factory
    for server in servers:
        server.shutdown()
    logging.getLogger("echo").removeHandler(errors)
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(5)
    leaked_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    leaked_fds = _open_fds() - fds_before
    assert not leaked_fds, f"file descriptors left open: {leaked_fds}"
    assert not errors.records, f"server logged errors: {[r.getMessage() for r in errors.records]}"


# A scheduler on a fake clock, for the scheduler's own tests and the echo step's.
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[Scheduler]:
    sched = Scheduler("test", buffer_size=1024, clock=clock)
    yield sched
    sched.request_stop(clock.now, clock.now)
    sched.run_once(block=False)
    sched.run_once(block=False)
    sched.run()  # closes what is left, and the selector
