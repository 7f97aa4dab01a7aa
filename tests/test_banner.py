"""--banner: the template's rules, the line on the wire (before any echo, after a PROXY
header), and a bad template refused at startup naming --banner."""

from __future__ import annotations

import socket

import pytest

import server
from server.engine.banner import Banner, check_template, parse_template
from tests.conftest import ServerFactory
from tests.helpers import read_until_eof, run_cli


def test_escapes_are_decoded_and_empty_means_off() -> None:
    assert parse_template(r"{hostname}\t{peer}\r\n\\n") == "{hostname}\t{peer}\r\n\\n"
    assert parse_template("") is None


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{host}", "unknown field {host}"),
        ("{peer.__class__}", "unknown field {peer.__class__}"),
        ("{peer[0]}", "unknown field {peer[0]}"),
        ("{}", "unknown field {}"),
        ("{peer:{conn}}", "the format of {peer} may not hold another field"),
        ("{peer:{x}}", "the format of {peer} may not hold another field"),
        ("{conn:>5000000}", "renders to up to 5000000 characters; at most 1024"),
        ("{peer", "not a valid template"),
        ("{conn:q}", "not a valid template"),
        ("x" * 513, "at most 512 characters"),
    ],
)
def test_a_bad_template_says_why(template: str, problem: str) -> None:
    assert problem in (check_template(template) or "")


def test_render_fills_every_field_and_ends_the_line() -> None:
    banner = Banner("{hostname} {peer} {local} {conn} {version}", hostname="replica-1")
    line = banner.render(7, "192.0.2.1:5555", lambda: "10.0.0.5:7007")
    assert line == f"replica-1 192.0.2.1:5555 10.0.0.5:7007 7 {server.__version__}\n".encode()
    asked: list[str] = []

    def local() -> str:
        asked.append("local")
        return ""

    assert Banner("{peer}\n").render(1, "p", local) == b"p\n"
    assert asked == []  # the local address is looked up only when the template uses it


def _first_line_then_echo(address: tuple[str, int], send: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(send)
        sock.shutdown(socket.SHUT_WR)
        data = read_until_eof(sock)
    line, _, rest = data.partition(b"\n")
    return line, rest


def test_the_banner_comes_first_and_is_not_counted_as_echo(make_server: ServerFactory) -> None:
    server, events = make_server(banner="{conn} {peer} {local}")
    address = server.server_address[:2]
    line, rest = _first_line_then_echo(address, b"hello")
    conn, peer, local = line.decode().split(" ")
    assert rest == b"hello"
    assert local == f"127.0.0.1:{address[1]}" and peer.startswith("127.0.0.1:")
    closed = events.wait_for(lambda e: e.name == "closed")
    assert closed.conn_id == int(conn) and closed.peer == peer and closed.data["bytes_out"] == 5


def test_behind_proxy_the_banner_names_the_client_from_the_header(make_server: ServerFactory) -> None:
    server, _ = make_server(banner="{peer}", proxy_protocol="v1")
    line, rest = _first_line_then_echo(server.server_address[:2], b"PROXY TCP4 192.0.2.1 10.0.0.1 4000 7007\r\nhi")
    assert (line, rest) == (b"192.0.2.1:4000", b"hi")


def test_a_bad_banner_is_a_one_line_error_naming_the_flag() -> None:
    result = run_cli(["--banner", "{hostname} {client}", "--port", "0", "--admin-port", "off"])
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "echo-server: error: --banner: unknown field {client}; the fields are "
        "{hostname}, {peer}, {local}, {conn}, {version}, {listener}, "
    )
    assert line.endswith(", {mss}, {rtt_us}, {json}")
    result = run_cli(["--port", "0"], env={"ECHO_BANNER": "{peer!z}"})
    assert result.returncode == 2 and result.stderr.startswith("echo-server: error: ECHO_BANNER: ")
