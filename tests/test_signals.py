"""Every signal the server handles, sent for real to a real server process; and the
Signals wake-up mechanism itself, in this process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.signals import Action, Signals, Wakeup
from tests.helpers import ROOT, ServerProcess, address_of, read_exactly, read_until_eof
from tests.test_log_faults import FileTail


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--port", "0", "--admin-port", "off", "--stats-interval", "0")
    try:
        yield process.start()
    finally:
        process.stop()


def _echoes(address: tuple[str, int], payload: bytes = b"still echoing") -> bool:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        return read_exactly(sock, len(payload)) == payload


def test_sighup_is_logged_and_ignored(server: ServerProcess) -> None:
    with socket.create_connection(server.address, timeout=10) as held:
        server.signal(signal.SIGHUP)
        said = server.wait_for("log", level="warning", logger="echo.cli")
        assert said["message"] == "received SIGHUP: reload is not supported yet; ignored"
        held.sendall(b"across the HUP")  # the connection open across it is untouched
        assert read_exactly(held, 14) == b"across the HUP"
    assert _echoes(server.address)
    server.signal(signal.SIGTERM)
    assert server.finish() == 0
    assert server.seen[-1]["event"] == "stopped"
    assert sum(r.get("message", "").startswith("received SIGHUP") for r in server.seen) == 1


def test_sigquit_stops_gracefully_like_sigterm(server: ServerProcess) -> None:
    with socket.create_connection(server.address, timeout=10) as held:
        held.sendall(b"before QUIT")
        assert read_exactly(held, 11) == b"before QUIT"
        server.signal(signal.SIGQUIT)
        assert read_until_eof(held) == b""  # drained and closed with FIN
    assert server.finish() == 0
    events = [r["event"] for r in server.seen]
    assert events[-2:] == ["stopping", "stopped"] or events[-1] == "stopped"
    assert any(r.get("message") == "received SIGQUIT" for r in server.seen)


def test_sigusr1_with_stdout_is_a_no_op(server: ServerProcess) -> None:
    server.signal(signal.SIGUSR1)
    said = server.wait_for("log", logger="echo.cli")
    assert said["message"] == "received SIGUSR1: the log goes to stdout; nothing to reopen"
    assert _echoes(server.address)
    server.signal(signal.SIGTERM)
    assert server.finish() == 0
    assert server.seen[-1]["event"] == "stopped"


def test_sigusr2_keeps_its_default_action(server: ServerProcess) -> None:
    """Not given a meaning (the README says so): it ends the process, as it always did."""
    server.signal(signal.SIGUSR2)
    assert server.finish() == -signal.SIGUSR2


def test_sigusr1_reopens_the_log_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    log_path = tmp_path / "app.log"
    tail = FileTail(log_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--admin-port", "off", "--log-format", "json",
         "--stats-interval", "0", "--log-file", str(log_path)],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if not k.startswith("ECHO_")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        address = address_of(tail.wait_for_event("ready"))
        assert _echoes(address, b"into the first file")
        tail.wait_for_event("closed")
        shutil.move(log_path, tmp_path / "app.log.old")  # what logrotate (or an operator) does
        process.send_signal(signal.SIGUSR1)
        reopened = tail.wait_for_event("log_reopened")  # the first line of a new app.log
        assert _echoes(address, b"into the second file")
        tail.wait_for_event("closed")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stderr is not None and process.stderr.read() == ""
        old, new = tail.records(0), tail.records(-1)
    finally:
        tail.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
    assert len(tail.files) == 2
    assert [r["event"] for r in old][:3] == ["started", "listening", "ready"]
    assert old[-1].get("message") == "received SIGUSR1: reopening the log file"  # the old file's last word
    assert new[0] == reopened
    assert [r["event"] for r in new][-1] == "stopped"
    assert sum(r["event"] == "opened" for r in old) == sum(r["event"] == "opened" for r in new) == 1
    assert (tmp_path / "app.log.old").read_text().count("\n") == len(old)  # nothing written there after


# --- the mechanism, in this process (pytest runs tests on the main thread) ---------------


def test_a_handled_signal_is_a_wakeup_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.wait(5) == Wakeup(Action.RELOAD, signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGQUIT)
        assert signals.wait(5) == Wakeup(Action.STOP, signal.SIGQUIT)
    assert signal.getsignal(signal.SIGHUP) is before


def test_wake_from_a_thread_and_a_timeout() -> None:
    with Signals() as signals:
        assert signals.wait(0.01) is None
        signals.wake(Action.THREAD_FAILED)
        signals.wake()
        assert signals.wait(5) == Wakeup(Action.THREAD_FAILED)
        assert signals.wait(5) == Wakeup(Action.STOPPED)
