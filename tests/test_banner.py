"""--banner: the template's rules, the line on the wire (before any echo, after a PROXY
header), and a bad template refused at startup naming --banner."""

from __future__ import annotations

import socket

import pytest

import server
from server.engine.banner import Banner
from server.engine.connection import Connection
from server.lib.banner_template import check_template, parse_template
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
        ("{conn:>5000000}", "the width of {conn} may be at most 1024"),
        ("{conn:>999999999999999999999}", "the width of {conn} may be at most 1024"),
        ("{conn:c}", "not a valid template"),
        ("{peer:>1000}{hostname:>100}", "renders to up to 1100 characters; at most 1024"),
        ("{peer", "not a valid template"),
        ("{conn:q}", "not a valid template"),
        ("x" * 513, "at most 512 characters"),
    ],
)
def test_a_bad_template_says_why(template: str, problem: str) -> None:
    assert problem in (check_template(template) or "")


def test_render_fills_every_field_and_ends_the_line() -> None:
    banner = Banner("{hostname} {peer} {local} {conn} {listener} {version}", server.__version__, hostname="replica-1")
    conn = Connection(7, "192.0.2.1:5555", "192.0.2.1", 0.0, "tls")
    with socket.create_server(("127.0.0.1", 0)) as local:
        line = banner.render(conn, local)
        here = f"127.0.0.1:{local.getsockname()[1]}"
    assert line == f"replica-1 192.0.2.1:5555 {here} 7 tls {server.__version__}\n".encode()


def test_the_local_address_is_looked_up_only_when_the_template_uses_it() -> None:
    class NoAddress:
        def getsockname(self) -> tuple[str, int]:
            raise AssertionError("asked for the local address")

    conn = Connection(1, "p", "p", 0.0)
    assert Banner("{peer}\n", "1").render(conn, NoAddress()) == b"p\n"  # type: ignore[arg-type]


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
        "{hostname}, {peer}, {local}, {conn}, {listener}, {version}, {worker}, "
    )
    assert line.endswith(", {mss}, {rtt_us}, {json}")
    result = run_cli(["--port", "0"], env={"ECHO_BANNER": "{peer!z}"})
    assert result.returncode == 2 and result.stderr.startswith("echo-server: error: ECHO_BANNER: ")
