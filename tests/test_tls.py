"""TLS echo: real certificates made here with the openssl CLI, real clients (openssl
s_client, ncat --ssl, socat OPENSSL:, Python's ssl), byte-exact up to 16 MiB; mTLS;
handshake timeout; a plain-TCP client on the TLS port; drain; SIGHUP reload; startup
errors. The certificate files live in tmp_path."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.engine.tls import TlsContext, TlsError, build_context
from tests.conftest import ServerFactory
from tests.helpers import ServerProcess, address_of, read_exactly, run_cli
from tests.pki import Pki, client_context, openssl, tls_client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

BIG = 16 * 1024 * 1024


_client_context = client_context
_tls_client = tls_client


def _tls_server(make_server: ServerFactory, pki: Pki, **settings: Any) -> tuple[Any, Any, tuple[str, int]]:
    server, events = make_server(tls_port=0, tls_cert=str(pki.cert), tls_key=str(pki.key), **settings)
    assert server.tls_address is not None
    return server, events, (server.tls_address[0], server.tls_address[1])


def _closed(events: Any, reason: str) -> Any:
    return events.wait_for(lambda e: e.name == "closed" and e.data.get("reason") == reason)


# --- byte-exact echo with real clients ---------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("payload") / "16MiB.bin"
    data = os.urandom(BIG)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _client_command(tool: str, address: tuple[str, int], ca: Path) -> list[str]:
    host, port = address
    if tool == "openssl":  # -quiet implies -ign_eof: it never closes on its own; we stop it
        return ["openssl", "s_client", "-quiet", "-CAfile", str(ca), "-connect", f"{host}:{port}"]
    if tool == "ncat":
        return ["ncat", "--ssl", "--ssl-trustfile", str(ca), "--ssl-servername", "localhost", host, str(port)]
    return ["socat", "-t", "30", "-", f"OPENSSL:{host}:{port},cafile={ca}"]


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["openssl", "ncat", "socat"])
def test_16_mib_echo_byte_exact_through_real_tls_clients(
    make_server: ServerFactory, pki: Pki, big_file: tuple[Path, str], tmp_path: Path, tool: str
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}")
    path, digest = big_file
    _, events, address = _tls_server(make_server, pki)
    received = hashlib.sha256()
    size = 0
    with path.open("rb") as stdin:
        proc = subprocess.Popen(
            _client_command(tool, address, pki.ca), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        timer = threading.Timer(120, proc.kill)  # a hang fails the test instead of hanging it
        timer.start()
        try:
            while size < BIG:
                chunk = os.read(proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    break
                received.update(chunk)
                size += len(chunk)
            if tool == "openssl":
                proc.terminate()  # s_client keeps the connection open after its stdin ends
            assert proc.wait(60) == 0 or tool == "openssl"
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert size == BIG
    assert received.hexdigest() == digest
    closed = events.wait_for(lambda e: e.name == "closed")
    assert closed.data["listener"] == "tls"
    assert closed.data["bytes_in"] == closed.data["bytes_out"] == BIG
    if tool != "openssl":  # these two half-close (close_notify, FIN) and read to the end
        assert closed.data["reason"] == "eof"


# --- Python's ssl as the client: the exact cases --------------------------------------------------


def test_echo_counts_on_the_tls_listener(make_server: ServerFactory, pki: Pki) -> None:
    server, events, address = _tls_server(make_server, pki, loops=2)
    with _tls_client(address, pki) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        for size in (1, 1000, 16_384, 100_000):
            payload = os.urandom(size)
            tls.sendall(payload)
            assert read_exactly(tls, size) == payload
    closed = events.wait_for(lambda e: e.name == "closed")
    assert closed.data["listener"] == "tls"
    assert closed.data["bytes_out"] == 117_385
    snapshot = server.stats.snapshot()
    assert snapshot.listeners["tls"]["accepted"] == 1
    assert snapshot.listeners["tcp"]["accepted"] == 0
    assert snapshot.listeners["tls"]["bytes_sent"] == 117_385


def test_tls_1_1_is_refused(make_server: ServerFactory, pki: Pki) -> None:
    _, events, address = _tls_server(make_server, pki)
    context = _client_context(pki)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(address, timeout=10) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert _closed(events, "tls_handshake").data["detail"] == "unsupported_protocol"


def test_mtls_accepts_a_good_client_certificate_and_refuses_none(make_server: ServerFactory, pki: Pki) -> None:
    _, events, address = _tls_server(make_server, pki, tls_client_ca=str(pki.ca))
    with _tls_client(address, pki, with_cert=True) as tls:
        tls.sendall(b"with a certificate")
        assert read_exactly(tls, 18) == b"with a certificate"
    echoed = b""
    with socket.create_connection(address, timeout=10) as raw:
        try:  # TLS 1.2 fails in the handshake; TLS 1.3 at the first read, with the server's alert
            with _client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"no certificate")
                echoed = tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            pass
    assert echoed == b""
    refused = _closed(events, "tls_handshake")
    assert "certificate" in refused.data["detail"]
    assert refused.data["bytes_out"] == 0


def test_a_client_that_never_handshakes_is_closed_at_the_timeout(make_server: ServerFactory, pki: Pki) -> None:
    _, events, address = _tls_server(make_server, pki, tls_handshake_timeout=0.5, idle_timeout=60)
    with socket.create_connection(address, timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # FIN, no bytes: the server closed it
        waited = time.monotonic() - started
    assert 0.4 <= waited < 5, waited
    closed = _closed(events, "tls_handshake")
    assert closed.data["detail"] == "timeout"


def test_a_plain_tcp_client_on_the_tls_port_is_refused_cleanly(make_server: ServerFactory, pki: Pki) -> None:
    server, events, address = _tls_server(make_server, pki)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"hello, plain text\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"hello" not in received  # at most a TLS alert, never an echo
    closed = _closed(events, "tls_handshake")
    assert closed.data["detail"] == "wrong_version_number"
    assert server.stats.snapshot().closed_by_reason["tls_handshake"] == 1
    # ... and the listener goes on: a real client right after is served.
    with _tls_client(address, pki) as tls:
        tls.sendall(b"after")
        assert read_exactly(tls, 5) == b"after"


def test_drain_sends_close_notify_after_the_echo(make_server: ServerFactory, pki: Pki) -> None:
    server, events, address = _tls_server(make_server, pki, shutdown_timeout=0.2)
    with _tls_client(address, pki) as tls:
        tls.sendall(b"before the stop")
        assert read_exactly(tls, 15) == b"before the stop"
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        assert tls.recv(100) == b""  # close_notify: a clean TLS end, not a reset
    stopper.join(10)
    assert _closed(events, "shutdown").data["listener"] == "tls"


def test_plain_tcp_still_works_beside_tls(make_server: ServerFactory, pki: Pki) -> None:
    server, _, _ = _tls_server(make_server, pki)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"plain")
        assert read_exactly(sock, 5) == b"plain"


# --- the context: files, errors, reload -----------------------------------------------------


def test_bad_files_are_named_by_setting(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ((str(tmp_path / "missing.pem"), str(pki.key), None), "tls_cert", "No such file"),
        ((str(garbage), str(pki.key), None), "tls_cert", "no PEM certificate"),
        ((str(pki.cert), str(garbage), None), "tls_key", "cannot load the key"),
        ((str(pki.cert), str(pki.other_key), None), "tls_key", "is not the key of the certificate"),
        ((str(pki.cert), str(pki.key), str(garbage)), "tls_client_ca", "no PEM CA certificate"),
    ]
    for (cert, key, ca), setting, problem in cases:
        with pytest.raises(TlsError) as caught:
            build_context(cert, key, ca)
        assert caught.value.setting == setting
        assert problem in caught.value.problem


def test_an_encrypted_key_is_refused_without_a_prompt(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    openssl("pkey", "-in", pki.key, "-aes256", "-passout", "pass:secret", "-out", encrypted, cwd=tmp_path)
    with pytest.raises(TlsError) as caught:
        build_context(str(pki.cert), str(encrypted), None)
    assert caught.value.setting == "tls_key"
    assert "encrypted" in caught.value.problem


def test_reload_keeps_the_old_context_when_the_new_files_are_bad(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)

    tls = TlsContext.load(str(cert), str(key), None)
    first = tls.context
    key.write_text("garbage\n")
    assert tls.reload() is False
    assert tls.context is first
    shutil.copy(pki.other_key, key)
    shutil.copy(pki.other_cert, cert)
    assert tls.reload() is True
    assert tls.context is not first


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--tls-port", "0"], {}, "--tls-cert: required"),
        (["--tls-port", "0", "--tls-cert", "{cert}"], {}, "--tls-key: required"),
        (["--tls-port", "0", "--tls-cert", "/nonexistent.pem", "--tls-key", "{key}"], {}, "--tls-cert: cannot read"),
        (["--tls-port", "0", "--tls-cert", "{cert}"], {"ECHO_TLS_KEY": "{other_key}"}, "ECHO_TLS_KEY: "),
    ],
)
def test_bad_tls_files_exit_2_with_one_line(pki: Pki, args: list[str], env: dict[str, str], named: str) -> None:
    paths = {"cert": str(pki.cert), "key": str(pki.key), "other_key": str(pki.other_key)}
    result = run_cli(
        ["--port", "0", "--admin-port", "off", *(a.format(**paths) for a in args)],
        env={k: v.format(**paths) for k, v in env.items()},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("echo-server: error: " + named), lines
    assert "Traceback" not in result.stderr


@pytest.fixture
def tls_files(pki: Pki, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    yield cert, key


def _serial(address: tuple[str, int], pki: Pki) -> int:
    with _tls_client(address, pki) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"x")
        assert read_exactly(tls, 1) == b"x"
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der, capture_output=True, check=True
    ).stdout.decode()
    return int(text.strip().split("=")[1], 16)


def test_sighup_reloads_the_certificate_for_new_connections(pki: Pki, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    process = ServerProcess(
        "--port", "0", "--admin-port", "off", "--stats-interval", "0",
        "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    try:
        address = address_of(process.wait_for("listening"), "tls_address")
        process.start()
        assert _serial(address, pki) == 1001
        shutil.copy(pki.other_cert, cert)
        shutil.copy(pki.other_key, key)
        process.signal(signal.SIGHUP)
        process.wait_for("log", level="info", logger="echo.tls")
        assert _serial(address, pki) == 1002
        key.write_text("not a key\n")  # a bad file at reload: the old one stays, one error
        process.signal(signal.SIGHUP)
        said = process.wait_for("log", level="error", logger="echo.tls")
        assert "TLS reload failed" in said["message"]
        assert _serial(address, pki) == 1002
        process.signal(signal.SIGTERM)
        assert process.finish() == 0
        assert "Traceback" not in process.stderr()
        assert sum(r.get("level") == "error" for r in process.seen) == 1
    finally:
        process.stop()


def test_failed_handshakes_are_logged_at_most_once_a_second(
    make_server: ServerFactory, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server, events, address = _tls_server(make_server, pki)
    caplog.set_level(logging.WARNING, logger="echo.tls")
    started = time.monotonic()
    for _ in range(30):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    events.wait_for(lambda e: len(events.named("closed")) == 30)
    elapsed = time.monotonic() - started
    warnings_said = [r for r in caplog.records if r.name == "echo.tls"]
    assert 1 <= len(warnings_said) <= elapsed + 1, (len(warnings_said), elapsed)
    assert "Traceback" not in caplog.text
    assert server.stats.snapshot().closed_by_reason["tls_handshake"] == 30


def test_bytes_held_decrypted_are_echoed_without_waiting_for_the_socket(make_server: ServerFactory, pki: Pki) -> None:
    # A 1 KiB buffer takes a 16 KiB TLS record in 16 reads: after the first the rest sits
    # in the TLS layer (pending()) while the socket has nothing more to say.
    _, _, address = _tls_server(make_server, pki, buffer_size=1024)
    payload = os.urandom(100_000)
    with _tls_client(address, pki) as tls:
        tls.sendall(payload)
        assert read_exactly(tls, len(payload)) == payload


def test_idle_and_write_stall_deadlines_apply_to_tls(make_server: ServerFactory, pki: Pki) -> None:
    _, events, address = _tls_server(make_server, pki, idle_timeout=0.3, write_stall_timeout=0.5)
    with _tls_client(address, pki) as tls:
        tls.sendall(b"then silence")
        assert read_exactly(tls, 12) == b"then silence"
        assert tls.recv(100) == b""  # closed at the idle deadline
    assert _closed(events, "idle_timeout").data["listener"] == "tls"
    with (
        _tls_client(address, pki) as tls,
        pytest.raises(OSError),  # it never reads: the server stops reading, then resets it
    ):
        for _ in range(10_000):
            tls.sendall(bytes(65_536))
    closed = _closed(events, "write_stall")
    assert closed.data["bytes_in"] - closed.data["bytes_out"] <= 65_536 + 16_384


def test_tls_connections_count_against_the_same_limits(make_server: ServerFactory, pki: Pki) -> None:
    server, events, address = _tls_server(make_server, pki, max_connections=1)
    with _tls_client(address, pki) as tls:
        tls.sendall(b"held")
        assert read_exactly(tls, 4) == b"held"
        with socket.create_connection(server.server_address[:2], timeout=10) as plain:
            assert plain.recv(10) == b""  # the plain port is full too
        rejected = events.wait_for(lambda e: e.name == "rejected")
        assert "listener" not in rejected.data  # plain TCP, as in its closed events
        with socket.create_connection(address, timeout=10) as second:
            assert second.recv(10) == b""  # and so is the TLS port, for a second TLS client
        on_tls = events.wait_for(lambda e: e.name == "rejected" and e is not rejected)
        assert on_tls.data["listener"] == "tls" and on_tls.data["reason"] == "max_connections"
    assert server.stats.snapshot().rejected["max_connections"] == 2
