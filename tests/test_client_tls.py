"""echo-client --tls against the server's own TLS listener (a real server process,
certificates made with openssl by the pki fixture, tests/pki.py): send, ping and bench
verify the certificate, present a client certificate for mTLS, and say what to pass
when something does not fit; --sni and --alpn reach a TLS server that records them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, address_of
from tests.pki import Pki
from tests.test_client import client_cli

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _tls_server(pki: Pki, *extra: str) -> tuple[ServerProcess, list[str]]:
    process = ServerProcess(
        "--port", "0", "--admin-port", "off", "--stats-interval", "0",
        "--tls-port", "0", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), *extra,
    )  # fmt: skip
    host, port = address_of(process.wait_for("listening"), "tls_address")
    process.start()
    return process, [host, str(port)]


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[tuple[ServerProcess, list[str]]]:
    process, target = _tls_server(pki)
    try:
        yield process, target
    finally:
        process.stop()


def test_send_ping_and_bench_over_tls(pki: Pki) -> None:
    process, target = _tls_server(pki)
    ca = ["--tls", "--ca", str(pki.ca)]
    try:
        sent = client_cli("send", "over tls", *target, *ca)
        assert (sent.returncode, sent.stdout, sent.stderr) == (0, b"over tls", b"")
        ping = client_cli("ping", "-c", "3", "-s", "300000", "--json", *target, *ca)  # many TLS records each
        assert ping.returncode == 0, ping.stderr
        report = json.loads(ping.stdout)
        assert report["transport"] == "tls" and report["received"] == 3
        assert report["tls"]["version"] == "TLSv1.3" and report["tls"]["alpn"] is None
        bench = client_cli(
            "bench", *target, *ca, "--conns", "4", "--size", "16384", "--pipeline", "4", "--idle", "2",
            "--duration", "1", "--processes", "2", "--json",
        )  # fmt: skip
        assert bench.returncode == 0, bench.stderr
        figures = json.loads(bench.stdout)
        assert figures["errors"] == {} and figures["mismatches"] == 0 and figures["messages"] > 0
        assert figures["idle_open_at_end"] == 2
        process.signal(signal.SIGTERM)
        assert process.finish() == 0
    finally:
        process.stop()
    closed = [record for record in process.seen if record.get("event") == "closed"]
    # send, ping, bench's probe, its 4 busy and 2 idle connections: every one ended cleanly.
    assert [(record["listener"], record["reason"]) for record in closed] == [("tls", "eof")] * 9


def test_the_certificate_is_verified_unless_insecure(tls_server: tuple[ServerProcess, list[str]]) -> None:
    _, target = tls_server
    unverified = client_cli("send", "x", *target, "--tls")
    assert unverified.returncode == 1
    assert unverified.stderr.decode().endswith(
        "(pass --ca FILE with the CA that signed it, --sni NAME for the name it holds, or --insecure)\n"
    )
    assert client_cli("send", "x", *target, "--tls", "--insecure").stdout == b"x"


def test_sni_names_the_certificate_to_verify(pki: Pki, tls_server: tuple[ServerProcess, list[str]]) -> None:
    _, target = tls_server
    ca = ["--tls", "--ca", str(pki.ca)]
    assert client_cli("send", "x", *target, *ca, "--sni", "localhost").stdout == b"x"  # a DNS name it holds
    other = client_cli("send", "x", *target, *ca, "--sni", "other.example")
    assert other.returncode == 1 and b"Hostname mismatch" in other.stderr and other.stderr.count(b"\n") == 1


def test_mtls_with_a_client_certificate_and_without(pki: Pki) -> None:
    process, target = _tls_server(pki, "--tls-client-ca", str(pki.ca))
    ca = ["--tls", "--ca", str(pki.ca)]
    try:
        with_cert = client_cli(
            "send", "mtls", *target, *ca, "--cert", str(pki.client_cert), "--key", str(pki.client_key)
        )
        without = client_cli("send", "mtls", *target, *ca)
    finally:
        process.stop()
    assert (with_cert.returncode, with_cert.stdout) == (0, b"mtls")
    assert without.returncode == 1 and without.stderr.count(b"\n") == 1
    assert b"does the server want a client certificate? pass --cert and --key)" in without.stderr


def test_tls_to_a_plain_port_asks_whether_it_is_one() -> None:
    process = ServerProcess("--port", "0", "--admin-port", "off")
    try:
        process.start()
        result = client_cli("send", "x", process.address[0], str(process.address[1]), "--tls", "--insecure")
    finally:
        process.stop()
    assert result.returncode == 1
    # A plain echo server sends the ClientHello back: OpenSSL calls that an unexpected message.
    assert result.stderr.decode().endswith("failed: UNEXPECTED_MESSAGE (is it a TLS port?)\n")


class RecordingTlsServer:
    """One TLS connection, echoed until EOF, recording the SNI and the ALPN it settled."""

    def __init__(self, pki: Pki) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(pki.cert), str(pki.key))
        self.context.set_alpn_protocols(["echo"])
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _context: self.server_names.append(name)
        self.alpn: str | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve_one)
        self.thread.start()

    def _serve_one(self) -> None:
        conn, _ = self.listener.accept()
        with self.context.wrap_socket(conn, server_side=True) as tls:
            self.alpn = tls.selected_alpn_protocol()
            while data := tls.recv(65536):
                tls.sendall(data)

    def close(self) -> None:
        self.thread.join(30)
        self.listener.close()


def test_sni_and_alpn_reach_the_server(pki: Pki) -> None:
    server = RecordingTlsServer(pki)
    try:
        port = str(server.listener.getsockname()[1])
        ping = client_cli(
            "ping", "-c", "2", "--json", "127.0.0.1", port,
            "--tls", "--ca", str(pki.ca), "--sni", "localhost", "--alpn", "h2,echo",
        )  # fmt: skip
    finally:
        server.close()
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["tls"]["alpn"] == "echo" == server.alpn
    assert server.server_names == ["localhost"]


def test_the_connection_options_are_in_every_commands_help() -> None:
    for command in ("send", "ping", "bench"):
        text = client_cli(command, "--help").stdout.decode()
        for flag in (
            "--tls",
            "--ca",
            "--cert",
            "--key",
            "--sni",
            "--alpn",
            "--insecure",
            "--banner",
            "--proxy-protocol",
        ):
            assert f"  {flag}" in text, (command, flag)


def test_interactive_mode_over_tls_relays_everything_and_ends(
    pki: Pki, tls_server: tuple[ServerProcess, list[str]], tmp_path: Path
) -> None:
    _, target = tls_server
    data = os.urandom(3 << 20)  # far more than the socket buffers: sending and reading overlap
    piped = client_cli(*target, "--tls", "--ca", str(pki.ca), "--force", stdin=data)
    assert (piped.returncode, piped.stderr) == (0, b"") and piped.stdout == data
    source = tmp_path / "typed.txt"  # a regular file on stdin: no selector takes one
    source.write_bytes(b"from a file\n" * 1000)
    with source.open("rb") as stdin:
        from_file = subprocess.run(
            [sys.executable, "-m", "client", *target, "--tls", "--ca", str(pki.ca)],
            cwd=ROOT, stdin=stdin, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    assert (from_file.returncode, from_file.stdout, from_file.stderr) == (0, source.read_bytes(), b"")
