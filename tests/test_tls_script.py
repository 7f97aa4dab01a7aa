"""The TLS transport and handshake step without a kernel: a scripted ``ssl`` socket.

Every ``do_handshake``/``recv_into``/``send``/``unwrap`` result (want-read, want-write,
a partial write's retry, bytes held in ``pending()``, close_notify, a reset mid-handshake,
an alert) is scripted, and the test plays the scheduler as tests/test_echo_script.py
does. Every close reason a TLS connection can end with is reached here.
"""

from __future__ import annotations

import ssl
from collections import deque

import pytest

from server.engine.pipeline import STALL_CHECKS
from server.engine.tls_echo import HandshakeFailures, handshake_step, tls_echo
from server.engine.waits import READ, WRITE, Shutdown, WaitTimeout
from tests.test_echo_script import Run, Script, ScriptedSocket


def want_read() -> ssl.SSLWantReadError:
    return ssl.SSLWantReadError("want read")


def want_write() -> ssl.SSLWantWriteError:
    return ssl.SSLWantWriteError("want write")


def alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason.upper()}] {reason}")
    error.reason = reason.upper()
    return error


class ScriptedSSLSocket(ScriptedSocket):
    """A ScriptedSocket with the ssl.SSLSocket calls the TLS task makes: a scripted
    handshake, bytes the TLS layer holds (``pending``) and close_notify (``unwrap``)."""

    def __init__(
        self,
        reads: list[Script],
        sends: list[Script] | None = None,
        handshake: list[BaseException | None] | None = None,
        pending: list[int] | None = None,
        unwraps: list[BaseException | None] | None = None,
    ) -> None:
        super().__init__(reads, sends)
        self.handshake: deque[BaseException | None] = deque(handshake or [None])
        self.held: deque[int] = deque(pending or [])
        self.unwraps: deque[BaseException | None] = deque(unwraps or [None])
        self.handshakes = 0
        self.close_notify_sent = False

    def do_handshake(self) -> None:
        self.handshakes += 1
        step = self.handshake.popleft()
        if step is not None:
            raise step

    def pending(self) -> int:
        return self.held.popleft() if self.held else 0

    def unwrap(self) -> None:
        step = self.unwraps.popleft() if self.unwraps else None
        if step is not None:
            raise step
        self.close_notify_sent = True


def tls_run(sock: ScriptedSSLSocket, monkeypatch: pytest.MonkeyPatch, timeout_s: float = 10.0) -> Run:
    return Run(sock, monkeypatch, (handshake_step(timeout_s, HandshakeFailures()),), tls_echo)


def test_the_handshake_waits_for_what_the_tls_layer_wants_then_echoes(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([b"hello", b""], handshake=[want_read(), want_write(), None])
    run = tls_run(sock, monkeypatch)
    assert run.wait is not None and run.wait.events == READ  # the ClientHello is still to come
    assert run.ready() is not None and run.wait.events == WRITE
    assert run.ready() is not None and run.wait.events == READ  # done: now the echo's read
    run.run_until_done()
    assert bytes(sock.sent) == b"hello" and run.conn.reason == "eof" and sock.handshakes == 3
    assert sock.close_notify_sent and sock.shut_write and run.closed == [run.conn]


def test_a_handshake_that_runs_out_of_time_is_tls_handshake_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    run = tls_run(ScriptedSSLSocket([], handshake=[want_read()]), monkeypatch)
    run.throw(WaitTimeout(10.0))
    assert run.wait is None
    assert (run.conn.reason, run.conn.detail) == ("tls_handshake", "timeout") and run.closed == [run.conn]


@pytest.mark.parametrize(
    ("failure", "detail"),
    [
        (ConnectionResetError(), "reset"),
        (alert("wrong_version_number"), "wrong_version_number"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "eof"),
    ],
)
def test_a_handshake_that_fails_says_why(monkeypatch: pytest.MonkeyPatch, failure: OSError, detail: str) -> None:
    run = tls_run(ScriptedSSLSocket([], handshake=[want_read(), failure]), monkeypatch)
    run.ready()
    assert run.wait is None
    assert (run.conn.reason, run.conn.detail) == ("tls_handshake", detail)


def test_shutdown_during_the_handshake_is_a_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    run = tls_run(ScriptedSSLSocket([], handshake=[want_read()]), monkeypatch)
    run.throw(Shutdown())
    assert run.wait is None and run.conn.reason == "shutdown" and run.closed == [run.conn]


def test_bytes_the_tls_layer_holds_are_read_before_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # One socket read brought two records: the second is in pending(), not on the socket.
    sock = ScriptedSSLSocket([b"first", b"second", b""], pending=[0, 6, 0])
    run = tls_run(sock, monkeypatch)
    assert run.wait is not None and run.wait.events == READ
    assert run.ready() is not None  # "first" echoed; "second" read at once, no wait between
    assert bytes(sock.sent) == b"firstsecond"
    run.run_until_done()
    assert run.conn.reason == "eof" and run.conn.bytes_in == run.conn.bytes_out == 11


def test_part_of_a_record_waits_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([want_read(), b"whole", b""])
    run = tls_run(sock, monkeypatch)
    run.ready()
    assert run.wait is not None and run.wait.events == READ and sock.sent == b""
    run.run_until_done()
    assert bytes(sock.sent) == b"whole"


def test_a_write_that_wants_the_socket_is_retried_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([b"abcdef", b""], sends=[want_write(), want_write(), 6])
    run = tls_run(sock, monkeypatch)
    run.ready()
    assert run.wait is not None and run.wait.events == WRITE
    assert sock.reads == deque([b""])  # nothing more read while owing
    run.run_until_done()
    assert bytes(sock.sent) == b"abcdef" and run.conn.reason == "eof" and run.conn.bytes_out == 6


def test_a_write_that_wants_the_peer_first_waits_readable_as_a_write_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([b"abc"], sends=[want_read(), want_read()])
    sock.unsent = 4096
    run = tls_run(sock, monkeypatch)
    run.ready()  # the echo's send wants the peer's bytes (a renegotiation, a key update)
    assert run.wait is not None and run.wait.events == WRITE
    run.ready()
    assert run.wait is not None and run.wait.events == READ and run.wait is run.waits.write_check_wants_read
    for _ in range(STALL_CHECKS):
        run.throw(WaitTimeout(7.5))
    assert run.wait is None and run.conn.reason == "write_stall" and sock.linger_reset


def test_a_read_that_must_write_first_waits_writable_then_reads_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([want_write(), b"key update done", b""])
    run = tls_run(sock, monkeypatch)
    run.ready()
    assert run.wait is not None and run.wait.events == WRITE
    run.run_until_done()
    assert bytes(sock.sent) == b"key update done" and run.conn.reason == "eof"


def test_an_alert_after_the_handshake_is_an_error_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    run = tls_run(ScriptedSSLSocket([alert("bad_record_mac")]), monkeypatch)
    run.ready()
    assert run.wait is None
    assert (run.conn.reason, run.conn.detail) == ("error", "bad_record_mac") and run.closed == [run.conn]


def test_a_reset_after_the_handshake_is_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    run = tls_run(ScriptedSSLSocket([ConnectionResetError()]), monkeypatch)
    run.ready()
    assert run.wait is None and run.conn.reason == "reset"


def test_idle_then_stop_then_close_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    idle = tls_run(ScriptedSSLSocket([]), monkeypatch)
    idle.throw(WaitTimeout(300.0))
    assert idle.conn.reason == "idle_timeout"
    stopping = tls_run(ScriptedSSLSocket([b""]), monkeypatch)
    stopping.throw(Shutdown())  # close_notify, FIN, then read and drop until the client closes
    assert stopping.sock.shut_write and stopping.wait is not None
    stopping.run_until_done()
    assert stopping.conn.reason == "shutdown" and stopping.sock.close_notify_sent  # type: ignore[attr-defined]
    aborted = tls_run(ScriptedSSLSocket([]), monkeypatch)
    aborted.gen.close()  # the scheduler's abort deadline
    assert aborted.conn.reason == "shutdown" and aborted.closed == [aborted.conn]


def test_close_notify_that_wants_the_socket_waits_then_says_fin(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([b""], unwraps=[want_write(), None])
    run = tls_run(sock, monkeypatch)
    run.ready()  # EOF: our close_notify wants the socket
    assert run.wait is not None and run.wait.events == WRITE and not sock.shut_write
    run.run_until_done()
    assert sock.close_notify_sent and sock.shut_write and run.conn.reason == "eof"


def test_close_notify_refused_by_a_gone_tls_layer_still_says_fin(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = ScriptedSSLSocket([b""], unwraps=[alert("unexpected_eof_while_reading")])
    run = tls_run(sock, monkeypatch)
    run.run_until_done()
    assert not sock.close_notify_sent and sock.shut_write and run.conn.reason == "eof"
