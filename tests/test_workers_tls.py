"""TLS with --workers: every worker serves the supervisor's TLS listener, and SIGHUP's new
generation of workers loads the certificate afresh (a bad file keeps the running ones)."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, address_of, read_exactly

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def tls_round_trip(address: tuple[str, int], expected: Path) -> bool:
    """Echo through TLS; True if the server presented the certificate in ``expected``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # compared byte for byte below instead
    with socket.create_connection(address, timeout=5) as raw, context.wrap_socket(raw) as sock:
        sock.sendall(b"secret")
        assert read_exactly(sock, 6) == b"secret"
        presented = sock.getpeercert(binary_form=True)
    return presented == ssl.PEM_cert_to_DER_cert(expected.read_text())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    cert, key = self_signed(tmp_path, "first")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    process = ServerProcess(
        *("--port", "0", "--admin-port", "0", "--workers", "2", "--tls-port", "0"),
        *("--tls-cert", str(live_cert), "--tls-key", str(live_key)),
    )
    try:
        process.start()
        yield process, tmp_path
    finally:
        process.stop()


def test_workers_serve_tls_and_a_reload_loads_the_new_certificate(server: tuple[ServerProcess, Path]) -> None:
    process, directory = server
    tls_address = address_of(process.wait_for("listening"), "tls_address")
    assert tls_round_trip(tls_address, directory / "first.pem")

    (directory / "live.pem").write_text("not a certificate\n")
    process.signal(signal.SIGHUP)
    refused = process.wait_for("log", logger="echo.supervisor")
    assert refused["message"].startswith("reload: --tls-cert: ")
    assert tls_round_trip(tls_address, directory / "first.pem")  # still the running ones

    cert, key = self_signed(directory, "second")
    shutil.copy(key, directory / "live.key")
    shutil.copy(cert, directory / "live.pem")
    process.signal(signal.SIGHUP)
    process.wait_for("reloaded", generation=2)
    for index in (0, 1):  # the old generation accepts until it has heard it must drain
        process.wait_for("worker_exited", generation=1, worker=index)
    assert tls_round_trip(tls_address, directory / "second.pem")
    assert not [r for r in process.seen if r.get("event") == "reloading" and r["generation"] != 2]
    process.signal(signal.SIGTERM)
    assert process.finish(15) == 0
