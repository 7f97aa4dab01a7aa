"""What the server saw, end to end: the {json} banner and /connections/ID over TLS with a
stdlib client (SNI, ALPN, a client certificate; TLS 1.3 and 1.2-only), crafted PROXY v2
TLVs through a real socket, a clamped MSS, and a real HAProxy sending PROXY v2 with
authority, unique-id, ssl and crc32c (the unique_id it logs is the one reflected)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.pki import Pki
from tests.test_admin import get
from tests.test_pipeline import _address, _echo_over, _tls_settings
from tests.test_proxy_protocol import tlv, v2
from tests.test_proxy_tlv import ssl_tlv, with_crc32c
from tests.test_tls_facts import alpn_client

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed after {line!r}"
        line += chunk
    return line


@pytest.mark.parametrize(("maximum", "version"), [(None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")])
def test_tls_sni_alpn_and_client_certificate_in_the_json_banner_and_connections_view(
    make_server: ServerFactory, pki: Pki, maximum: ssl.TLSVersion | None, version: str
) -> None:
    settings = _tls_settings(pki, tls_client_ca=str(pki.ca), tls_alpn="x-echo", banner="{json}", admin_port=0)
    server, _ = make_server(**settings)
    address = _address(server, "tls")
    with (
        socket.create_connection(address, timeout=10) as raw,
        alpn_client(pki, maximum=maximum).wrap_socket(raw, server_hostname="a.example") as tls,
    ):
        line = read_line(tls)
        facts = json.loads(line)
        assert line.count(b"\n") == 1 and line.isascii()
        assert facts["listener"] == "tls" and facts["peer"] == f"127.0.0.1:{tls.getsockname()[1]}"
        assert facts["local"] == f"127.0.0.1:{address[1]}" and facts["conn"] >= 1
        seen = facts["tls"]
        assert (seen["version"], seen["sni"], seen["alpn"], seen["resumed"]) == (version, "a.example", "x-echo", False)
        cipher = tls.cipher()
        assert cipher is not None and seen["cipher"] == cipher[0]
        assert seen["client_cert"]["subject"] == "CN=echo client" and int(seen["client_cert"]["serial"], 16) == 1003
        assert facts["tcp_info"]["rtt_us"] > 0 and "proxy" not in facts
        assert _echo_over(tls, b"after the line, the echo") == b"after the line, the echo"
        status, _, body = get(server, f"/connections/{facts['conn']}")
        assert status == 200
        now = json.loads(body)
        assert now["tls"] == seen and now["bytes_in"] == len(b"after the line, the echo")


def test_proxy_v2_tlvs_are_reflected_and_hostile_values_stay_one_json_line(make_server: ServerFactory) -> None:
    server, _ = make_server(proxy_protocol="v2", banner="{proxy_authority}|{proxy_unique_id}|{json}")
    authority = b'a.example"\n\x00\xff'
    subs = tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example")
    header = with_crc32c(
        tlv(0x01, b"h2") + tlv(0x02, authority) + tlv(0x05, b"UID-7") + ssl_tlv(0x01, 0, subs) + tlv(0x30, b"ns")
        + tlv(0xEA, b"vpce-0abc")
    )  # fmt: skip
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(header + b"payload")
        line = read_line(sock)
        assert read_exactly_echo(sock, b"payload")
    flat_authority, unique_id, document = line.rstrip(b"\n").split(b"|", 2)
    assert flat_authority == b'a.example\\"\\n\\u0000\\\\xff' and unique_id == b"UID-7"
    proxy = json.loads(document)["proxy"]
    assert (proxy["version"], proxy["command"], proxy["family"]) == (2, "PROXY", "TCP4")
    assert proxy["src"] == "203.0.113.7:40000" and proxy["dst"] == "10.0.0.1:7007"
    tlvs = proxy["tlvs"]
    assert tlvs["authority"] == 'a.example"\n\x00\\xff' and tlvs["alpn"] == "h2" and tlvs["unique_id"] == "UID-7"
    assert tlvs["crc32c_ok"] is True and tlvs["netns"] == "ns"
    assert tlvs["ssl"] == {"client": ["ssl"], "verify": 0, "version": "TLSv1.3", "cn": "client.example",
                           "cipher": None, "sig_alg": None, "key_alg": None}  # fmt: skip
    assert tlvs["other"] == [{"type": 0xEA, "hex": b"vpce-0abc".hex(), "size": 9}]
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:  # a bad checksum is shown
        sock.sendall(with_crc32c(tlv(0x02, b"x"), corrupt=True))
        document = read_line(sock).rstrip(b"\n").split(b"|", 2)[2]
        assert json.loads(document)["proxy"]["tlvs"]["crc32c_ok"] is False
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:  # a bad length is refused
        sock.sendall(v2(tlvs=tlv(0x03, b"\0\0")))
        assert sock.recv(100) == b""


def read_exactly_echo(sock: socket.socket, data: bytes) -> bool:
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == data


@linux_only
def test_a_client_that_clamps_its_mss_is_reflected_with_an_snd_mss_within_it(make_server: ServerFactory) -> None:
    server, _ = make_server(banner="{mss} {rtt_us} {json}")
    with socket.socket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)  # before connecting: it goes in the SYN
        sock.settimeout(10)
        sock.connect(server.server_address[:2])
        mss, rtt, document = read_line(sock).rstrip(b"\n").split(b" ", 2)
    assert 0 < int(mss) <= 1000 and int(rtt) > 0
    assert json.loads(document)["tcp_info"]["snd_mss"] == int(mss)


def test_without_reflection_fields_nothing_is_gathered(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.engine import reflection

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("reflected without a reflection field")

    monkeypatch.setattr(reflection, "reflect", refuse)
    monkeypatch.setattr("server.engine.banner.reflect", refuse)
    server, _ = make_server(banner="{peer} {listener}")
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        assert read_line(sock).endswith(b" tcp\n")
        assert _echo_over(sock, b"x") == b"x"


# --- through a real HAProxy ---------------------------------------------------------------------


@pytest.fixture
def haproxy_v2(make_server: ServerFactory, pki: Pki, tmp_path: Path) -> Iterator[tuple[Any, tuple[str, int], Any]]:
    """HAProxy terminating TLS on an inherited socket, sending PROXY v2 with the
    authority, unique-id, ssl (with its cipher) and crc32c TLVs to the server's plain port; it logs each
    connection's unique id to stdout."""
    if shutil.which("haproxy") is None:
        pytest.skip("needs haproxy")
    server, _ = make_server(proxy_protocol="v2", banner="{json}", admin_port=0)
    host, port = server.server_address[:2]
    combined = tmp_path / "front.pem"
    combined.write_text(pki.cert.read_text() + pki.key.read_text())
    front = socket.create_server(("127.0.0.1", 0))
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n  log stdout format raw local0\n"
        "defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        "frontend tls_in\n"
        f"  bind fd@{front.fileno()} ssl crt {combined}\n"
        "  unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid\n"
        '  log-format "uid=%ID"\n'
        "  default_backend echo\n"
        "backend echo\n"
        f"  server echo {host}:{port} send-proxy-v2 proxy-v2-options authority,unique-id,ssl,ssl-cipher,crc32c\n"
    )
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], pass_fds=[front.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield server, front.getsockname()[:2], proc
    finally:
        proc.terminate()
        proc.wait(10)
        front.close()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_haproxy_send_proxy_v2_unique_id_is_the_one_it_logs(
    haproxy_v2: tuple[Any, tuple[str, int], Any], pki: Pki
) -> None:
    server, front, proc = haproxy_v2
    logged: list[bytes] = []
    seen_uid = threading.Event()

    def read_log() -> None:
        for line in proc.stdout:
            logged.append(line)
            if line.startswith(b"uid="):
                seen_uid.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    with (
        socket.create_connection(front, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="a.example") as tls,
    ):
        facts = json.loads(read_line(tls))
        assert _echo_over(tls, b"through haproxy") == b"through haproxy"
        client = f"127.0.0.1:{tls.getsockname()[1]}"
        status, _, body = get(server, f"/connections/{facts['conn']}")
        assert status == 200 and json.loads(body)["proxy"] == facts["proxy"]  # the same, asked later
    assert seen_uid.wait(10), f"HAProxy logged no unique id: {logged!r}"
    uid = next(line for line in logged if line.startswith(b"uid=")).strip()[4:].decode()
    proxy = facts["proxy"]
    assert facts["peer"] == client and proxy["src"] == client and facts["via"] != client
    tlvs = proxy["tlvs"]
    assert tlvs["unique_id"] == uid and uid  # the id HAProxy logs is the one it sent
    assert tlvs["authority"] == "a.example" and tlvs["crc32c_ok"] is True
    assert tlvs["ssl"]["version"] in ("TLSv1.3", "TLSv1.2") and "ssl" in tlvs["ssl"]["client"]
    assert tlvs["ssl"]["cipher"]
