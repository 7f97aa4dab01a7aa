"""The connection pipeline with real sockets: listeners as data, PROXY before TLS, the
banner over TLS, and the same through a real HAProxy (``send-proxy-v2`` to the TLS port)."""

from __future__ import annotations

import gc
import shutil
import socket
import ssl
import struct
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import Config
from server.core import EchoServer
from server.listeners import ListenerSpec, listener_specs
from server.observe.exchange import Exchange
from tests.conftest import ServerFactory
from tests.helpers import EventRecorder, read_exactly, read_until_eof
from tests.pki import Pki, tls_client
from tests.test_proxy_protocol import v2

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _tls_settings(pki: Pki, **settings: Any) -> dict[str, Any]:
    return {"tls_port": 0, "tls_cert": str(pki.cert), "tls_key": str(pki.key), **settings}


def _address(server: EchoServer, name: str) -> tuple[str, int]:
    address = server.address_of(name)
    assert address is not None, f"no {name} listener"
    return address[0], address[1]


def _echo_over(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return read_exactly(sock, len(data))


def _closed(conn_id: int) -> Callable[[Any], bool]:
    return lambda e: e.name == "closed" and e.conn_id == conn_id


# --- listeners as data -----------------------------------------------------------------------


def test_a_second_tcp_listener_is_one_more_spec(make_server: ServerFactory) -> None:
    """No change to core, the supervisor or a worker: a spec is enough."""
    config = Config(port=0, admin_port=None, stats_interval=0)
    specs = (*listener_specs(config), ListenerSpec("tcp2", "tcp", "127.0.0.1", 0))
    recorder = EventRecorder()
    exchange = Exchange("pipeline-two-listeners")
    exchange.attach(recorder)
    with EchoServer(config, exchange=exchange, specs=specs) as server:
        assert server.ready.wait(5)
        with socket.create_connection(_address(server, "tcp"), timeout=5) as first:
            assert _echo_over(first, b"one") == b"one"
        with socket.create_connection(_address(server, "tcp2"), timeout=5) as second:
            assert _echo_over(second, b"two!") == b"two!"
        closed = [recorder.wait_for(_closed(conn_id)) for conn_id in (1, 2)]
        assert "listener" not in closed[0].data and closed[1].data["listener"] == "tcp2"
        opened = recorder.wait_for(lambda e: e.name == "opened" and e.conn_id == 2)
        assert opened.data["listener"] == "tcp2"  # ids come from one counter for both listeners
        listening = recorder.wait_for(lambda e: e.name == "listening")
        assert listening.data["tcp2_address"].endswith(f":{_address(server, 'tcp2')[1]}")
        stats = server.stats.snapshot()
    assert stats.listeners["tcp"]["accepted"] == 1 and stats.listeners["tcp2"]["accepted"] == 1
    assert stats.listeners["tcp2"]["bytes_sent"] == 4 and stats.bytes_sent == 7


def test_listeners_open_all_or_nothing(make_server: ServerFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(port=0, admin_port=None, stats_interval=0)
        specs = (*listener_specs(config), ListenerSpec("busy", "tcp", "127.0.0.1", port))
        server = EchoServer(config, exchange=Exchange("pipeline-all-or-nothing"), specs=specs)
        with pytest.raises(OSError) as caught:
            server.start()
        assert caught.value.filename == "the BUSY port"
        assert server.listeners == ()  # the echo port opened first was closed again


# --- TLS: the banner, PROXY before the handshake -------------------------------------------------


def test_the_banner_is_written_over_tls_after_the_handshake(make_server: ServerFactory, pki: Pki) -> None:
    server, events = make_server(**_tls_settings(pki, banner="{listener} {peer} {conn}"))
    with tls_client(_address(server, "tls"), pki) as tls:
        client = f"127.0.0.1:{tls.getsockname()[1]}"
        line = b""
        while not line.endswith(b"\n"):
            line += tls.recv(1)
        assert line == f"tls {client} 1\n".encode()
        assert _echo_over(tls, b"after the banner") == b"after the banner"
    opened = events.wait_for(lambda e: e.name == "opened")
    assert opened.data["listener"] == "tls" and opened.peer == client


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_proxy_header_before_tls_names_the_client(make_server: ServerFactory, pki: Pki, version: str) -> None:
    server, events = make_server(**_tls_settings(pki, proxy_protocol=version, banner="{peer}"))
    header = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 7007\r\n" if version == "v1" else v2()
    with tls_client(_address(server, "tls"), pki, first=header) as tls:
        assert tls.recv(64) == b"203.0.113.7:40000\n"
        assert _echo_over(tls, b"x" * 100_000) == b"x" * 100_000  # nothing of the header in the echo
        tls.unwrap()
    opened = events.wait_for(lambda e: e.name == "opened")
    assert opened.peer == "203.0.113.7:40000" and opened.data["listener"] == "tls"
    assert opened.data["via"].startswith("127.0.0.1:")
    closed = events.wait_for(lambda e: e.name == "closed")
    assert closed.peer == "203.0.113.7:40000" and closed.data["reason"] == "eof"
    assert closed.data["bytes_in"] == 100_000


def test_mtls_behind_a_proxy_header(make_server: ServerFactory, pki: Pki) -> None:
    server, events = make_server(**_tls_settings(pki, tls_client_ca=str(pki.ca), proxy_protocol="v2"))
    with tls_client(_address(server, "tls"), pki, with_cert=True, first=v2()) as tls:
        assert _echo_over(tls, b"mutual") == b"mutual"
    assert events.wait_for(lambda e: e.name == "opened").peer == "203.0.113.7:40000"
    refused = pytest.raises((ssl.SSLError, ConnectionResetError))
    with refused, tls_client(_address(server, "tls"), pki, first=v2()) as tls:
        tls.sendall(b"no certificate")  # the server's alert may come at either call
        tls.recv(1)


@pytest.mark.parametrize(
    ("first", "detail"),
    [(b"GET / HTTP/1.0\r\n\r\n", "malformed"), (b"", "late")],
)
def test_a_bad_or_missing_header_on_the_tls_port_is_rejected_as_on_tcp(
    make_server: ServerFactory, pki: Pki, first: bytes, detail: str
) -> None:
    server, events = make_server(**_tls_settings(pki, proxy_protocol="any", proxy_protocol_timeout=0.3))
    with socket.create_connection(_address(server, "tls"), timeout=5) as raw:
        raw.sendall(first)
        try:
            assert read_until_eof(raw) == b""
        except ConnectionResetError:
            pass  # rejected at its first byte: the close may be a reset before our FIN
    rejected = events.wait_for(lambda e: e.name == "rejected")
    assert rejected.data["reason"] == "proxy_protocol" and rejected.data["detail"] == detail
    assert rejected.data["listener"] == "tls"
    stats = server.stats.snapshot()
    assert stats.rejected == {"proxy_protocol": 1} and stats.accepted == 0 and stats.active == 0


def test_clients_that_reset_before_the_tls_wrap_leave_no_socket_behind(make_server: ServerFactory, pki: Pki) -> None:
    """A peer gone before the hand-off's wrap: CPython's wrap detaches the accepted socket
    and raises, leaving an SSLSocket only the garbage collector would close (lib/tls_wrap.py closes it)."""
    server, _ = make_server(**_tls_settings(pki))
    for _ in range(300):
        with socket.create_connection(_address(server, "tls"), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
    with tls_client(_address(server, "tls"), pki) as tls:  # after all of them, in accept order
        assert _echo_over(tls, b"still here") == b"still here"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = [str(warning.message) for warning in seen if "SSLSocket" in str(warning.message)]
    assert not leaked, leaked


# --- through a real HAProxy ---------------------------------------------------------------------


@pytest.fixture
def haproxy_to_tls(make_server: ServerFactory, pki: Pki, tmp_path: Path) -> Iterator[tuple[Any, Any, tuple[str, int]]]:
    """HAProxy in TCP mode on an inherited listening socket (no free-port race),
    sending PROXY v2 to the server's TLS port, which it does not terminate."""
    if shutil.which("haproxy") is None:
        pytest.skip("needs haproxy")
    server, events = make_server(
        **_tls_settings(pki, tls_client_ca=str(pki.ca), proxy_protocol="v2", banner="{peer} via {listener}")
    )
    tls_host, tls_port = _address(server, "tls")
    front = socket.create_server(("127.0.0.1", 0))
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend tls_in\n  bind fd@{front.fileno()}\n  default_backend echo_tls\n"
        f"backend echo_tls\n  server echo {tls_host}:{tls_port} send-proxy-v2\n"
    )
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        pass_fds=[front.fileno()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield server, events, front.getsockname()[:2]
    finally:
        proc.terminate()
        proc.wait(10)
        front.close()
        assert proc.stderr is not None
        proc.stderr.close()


def test_tls_through_haproxy_send_proxy_v2_sees_the_real_client(
    haproxy_to_tls: tuple[Any, Any, tuple[str, int]], pki: Pki
) -> None:
    server, events, front = haproxy_to_tls
    with tls_client(front, pki, with_cert=True) as tls:
        client = f"127.0.0.1:{tls.getsockname()[1]}"
        line = b""
        while not line.endswith(b"\n"):
            line += tls.recv(1)
        assert line == f"{client} via tls\n".encode()  # the client's address, not HAProxy's
        assert _echo_over(tls, b"through haproxy") == b"through haproxy"
    opened = events.wait_for(lambda e: e.name == "opened" and e.data.get("via"))
    assert opened.peer == client and opened.data["via"] != client
    # A client without a certificate is refused by the server, through HAProxy as well.
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)), tls_client(front, pki) as tls:
        tls.sendall(b"no certificate")
        tls.recv(1)
    assert server.stats.snapshot().listeners["tls"]["accepted"] >= 1
