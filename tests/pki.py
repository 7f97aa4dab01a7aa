"""A throwaway PKI made with the openssl command: a CA, two server certificates for
127.0.0.1/localhost, and a client certificate (for mTLS). Used by the TLS tests."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.lib import tls_wrap


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path  # a second server certificate (reload), same CA
    other_key: Path


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _issue(directory: Path, name: str, subject: str, extensions: str, serial: int) -> tuple[Path, Path]:
    ext = directory / f"{name}.ext"
    ext.write_text(extensions + "\n")
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", subject, cwd=directory)
    openssl(
        "x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(serial),
        "-days", "2", "-extfile", ext, "-out", cert, cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    openssl("req", "-x509", *ec, *ca, cwd=directory)
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    cert, key = _issue(directory, "server", "/CN=localhost", server_ext, 1001)
    other_cert, other_key = _issue(directory, "other", "/CN=localhost", server_ext, 1002)
    client_cert, client_key = _issue(directory, "client", "/CN=echo client", "extendedKeyUsage=clientAuth", 1003)
    return Pki(directory / "ca.pem", cert, key, client_cert, client_key, other_cert, other_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@contextmanager
def tls_client(
    address: tuple[str, int], pki: Pki, *, with_cert: bool = False, first: bytes = b""
) -> Iterator[ssl.SSLSocket]:
    """A verified TLS connection to the server (with the client certificate if asked);
    ``first``: raw bytes sent before the handshake (a PROXY header)."""
    with socket.create_connection(address, timeout=10) as raw:
        if first:
            raw.sendall(first)
        with tls_wrap.wrap(client_context(pki, with_cert=with_cert), raw, server_hostname="127.0.0.1") as tls:
            yield tls
