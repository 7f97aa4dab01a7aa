"""Faults on the TLS listener and behind a PROXY header: a fault that acts at accept acts
before the handshake (the client's handshake is reset, or never answered); one that acts
on the echo acts after it; and a rule's ``from`` matches the client a PROXY header names."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from server.core import EchoServer
from server.faults.rules import parse_flag
from tests.conftest import ServerFactory
from tests.helpers import EventRecorder, read_exactly, read_until_eof, wait_readable
from tests.pki import Pki, client_context, pki, tls_client

__all__ = ["pki"]  # the fixture


def tls_faulty(make_server: ServerFactory, pki: Pki, *flags: str, **settings: Any) -> tuple[EchoServer, EventRecorder]:
    rules = tuple(parse_flag(flag) for flag in flags)
    return make_server(
        tls_port=0, tls_cert=str(pki.cert), tls_key=str(pki.key), faults="on", faults_rules=rules, **settings
    )


def tls_address(server: EchoServer) -> tuple[str, int]:
    assert server.tls_address is not None
    return str(server.tls_address[0]), int(server.tls_address[1])


def closed(recorder: EventRecorder, reason: str) -> Any:
    return recorder.wait_for(lambda e: e.name == "closed" and e.data.get("reason") == reason)


def test_reset_at_accept_resets_the_tls_handshake(make_server: ServerFactory, pki: Pki) -> None:
    server, recorder = tls_faulty(make_server, pki, "reset:listener=tls")
    with pytest.raises(ConnectionResetError), tls_client(tls_address(server), pki):
        pass
    event = closed(recorder, "fault_reset")
    assert event.data["listener"] == "tls"
    with socket.create_connection(server.server_address[:2], timeout=5) as plain:  # the rule names TLS only
        plain.sendall(b"tcp")
        assert read_exactly(plain, 3) == b"tcp"


def test_hang_leaves_the_handshake_unanswered(make_server: ServerFactory, pki: Pki) -> None:
    server, recorder = tls_faulty(make_server, pki, "hang:mode=no_echo", idle_timeout=1.0)
    with socket.create_connection(tls_address(server), timeout=0.5) as raw:
        with pytest.raises(TimeoutError):
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")  # no ServerHello comes
        event = closed(recorder, "fault_hang")
    assert event.data["bytes_in"] > 0 and event.data["bytes_out"] == 0  # it read the ClientHello, said nothing


def test_delay_and_close_act_on_the_echo_after_the_handshake(make_server: ServerFactory, pki: Pki) -> None:
    server, recorder = tls_faulty(make_server, pki, "delay:delay_ms=200,count=1", "close:after_bytes=4")
    with tls_client(tls_address(server), pki) as tls:
        began = time.monotonic()
        tls.sendall(b"slow")
        assert read_exactly(tls, 4) == b"slow"
        assert time.monotonic() - began >= 0.2
    with tls_client(tls_address(server), pki) as tls:
        tls.sendall(b"abcdefgh")
        assert read_until_eof(tls) == b"abcd"  # then close_notify: a clean TLS end
    assert closed(recorder, "fault_close").data["bytes_out"] == 4


def test_a_proxy_named_client_is_targeted_not_the_balancer(make_server: ServerFactory) -> None:
    server, recorder = make_server(
        faults="on", faults_rules=(parse_flag("reset:from=127.0.0.2/32"),), proxy_protocol="v1"
    )
    address = server.server_address[:2]
    with socket.create_connection(address, timeout=5) as sock:  # the balancer is 127.0.0.1
        sock.sendall(b"PROXY TCP4 127.0.0.3 127.0.0.1 5555 7007\r\nfine")
        assert read_exactly(sock, 4) == b"fine"
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 7007\r\nnope")
        assert wait_readable(sock, 5)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    event = closed(recorder, "fault_reset")
    assert event.peer == "127.0.0.2:5555" and event.data["via"].startswith("127.0.0.1:")
    assert recorder.wait_for(lambda e: e.name == "fault").peer == "127.0.0.2:5555"
