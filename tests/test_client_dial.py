"""echo-client against the server's own banner, PROXY and UDP listeners, each a real
server process: every command passes a --banner server with --banner and names the
option without it; --proxy-protocol's header is the one the server reads; --udp
echoes datagrams and counts the ones that do not come back."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest

from client.dial import BANNER_MAX_BYTES, DialOptions, first_line, read_banner, shown
from client.errors import BannerError
from client.proxy_header import encode, parse_endpoint
from server.engine.proxy_protocol import parse
from tests.helpers import ServerProcess, address_of
from tests.test_client import client_cli

HINT = "pass --banner to skip it (or --expect-banner REGEX to check it)"


@pytest.fixture(scope="module")
def banner_server() -> Iterator[ServerProcess]:
    process = ServerProcess("--port", "0", "--admin-port", "off", "--banner", r"{hostname} {peer}\n")
    try:
        yield process.start()
    finally:
        process.stop()


def _target(server: ServerProcess) -> list[str]:
    return [server.address[0], str(server.address[1])]


def _one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text.rstrip("\n")


def test_send_passes_a_banner_server_with_the_option_and_names_it_without(banner_server: ServerProcess) -> None:
    target = _target(banner_server)
    without = client_cli("send", "hello", *target)
    assert without.returncode == 2 and without.stdout == b""
    message = _one_line(without.stderr)
    assert message.startswith("echo-client: the echo differs from what was sent, first at byte 0") and HINT in message
    assert re.search(r"\('\S+ 127\.0\.0\.1:\d+'\)", message), message  # the line it saw, quoted
    assert client_cli("send", "hello", *target, "--banner").stdout == b"hello"
    checked = client_cli("send", "hello", *target, "--expect-banner", r"^\S+ 127\.0\.0\.1:\d+$", "--show-banner")
    assert checked.returncode == 0 and checked.stdout == b"hello"
    assert re.fullmatch(r"echo-client: banner: '\S+ 127\.0\.0\.1:\d+'\n", checked.stderr.decode())


def test_ping_and_bench_pass_with_the_option_and_name_it_without(banner_server: ServerProcess) -> None:
    target = _target(banner_server)
    ping = client_cli("ping", "-c", "3", *target, "--banner")
    assert ping.returncode == 0, ping.stderr
    assert "3 sent, 3 received, 0% loss" in ping.stdout.decode()
    failed = client_cli("ping", "-c", "3", *target)
    assert failed.returncode == 2 and HINT in _one_line(failed.stderr)
    assert "1 sent, 0 received, 100% loss" in failed.stdout.decode()  # the summary still comes
    bench = client_cli("bench", *target, "--banner", "--conns", "4", "--duration", "1", "--processes", "1", "--json")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["errors"] == {} and report["mismatches"] == 0 and report["messages"] > 0
    refused = client_cli("bench", *target, "--conns", "4", "--duration", "1", "--processes", "1")
    assert refused.returncode == 2 and refused.stdout == b"" and HINT in _one_line(refused.stderr)


def test_interactive_mode_skips_the_banner_with_the_option(banner_server: ServerProcess) -> None:
    result = client_cli(*_target(banner_server), "--banner", stdin=b"typed\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"typed\n", b"")


def test_a_banner_that_does_not_match_or_never_comes_names_the_option(banner_server: ServerProcess) -> None:
    mismatch = client_cli("send", "x", *_target(banner_server), "--expect-banner", "^replica-")
    assert mismatch.returncode == 2
    assert re.fullmatch(
        r"echo-client: the banner line '\S+ 127\.0\.0\.1:\d+' does not match --expect-banner '\^replica-'",
        _one_line(mismatch.stderr),
    )
    plain = ServerProcess("--port", "0", "--admin-port", "off")
    try:
        plain.start()
        silent = client_cli("send", "x", *_target(plain), "--banner", "--timeout", "0.5")
    finally:
        plain.stop()
    assert silent.returncode == 2
    assert _one_line(silent.stderr).endswith(
        "within 0.5 s: does the server send one? (drop --banner if it is not run with --banner)"
    )


# --- PROXY protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination"),
    [(("192.0.2.7", 4000), ("127.0.0.1", 7007)), (("2001:db8::7", 0), ("::1", 65535))],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_header_is_the_one_the_server_parses(
    version: str, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    header = parse(encode(version, source, destination))
    assert (header.version, header.local, header.source, header.destination) == (
        int(version[1]),
        False,
        source,
        destination,
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("192.0.2.1", "expected ADDR:PORT"),
        ("example.com:80", "expected an IP address"),
        ("2001:db8::1:80", r"write an IPv6 address in brackets, \[ADDR\]:PORT"),
        ("192.0.2.1:65536", "port 0-65535"),
    ],
)
def test_a_bad_source_says_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_endpoint(text)


@pytest.fixture(scope="module")
def proxy_server() -> Iterator[ServerProcess]:
    process = ServerProcess("--port", "0", "--admin-port", "off", "--proxy-protocol", "any", "--banner", r"{peer}\n")
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_server_sees_the_claimed_client(proxy_server: ServerProcess, version: str) -> None:
    source = "192.0.2.7:4000" if version == "v1" else "198.51.100.9:5000"
    result = client_cli(
        "send", "through", *_target(proxy_server), "--proxy-protocol", version, "--proxy-source", source,
        "--expect-banner", f"^{re.escape(source)}$",
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, b"through", b"")
    closed = proxy_server.wait_for("closed", peer=source)
    assert closed["reason"] == "eof" and closed["bytes_in"] == len(b"through")


def test_without_a_source_the_header_tells_the_truth(proxy_server: ServerProcess) -> None:
    result = client_cli("ping", "-c", "2", *_target(proxy_server), "--proxy-protocol", "v2", "--show-banner")
    assert result.returncode == 0, result.stderr
    peer = re.fullmatch(r"echo-client: banner: '(127\.0\.0\.1:\d+)'\n", result.stderr.decode())
    assert peer, result.stderr
    assert proxy_server.wait_for("closed", peer=peer.group(1))["reason"] == "eof"


def test_a_source_of_the_other_family_is_a_one_line_error(proxy_server: ServerProcess) -> None:
    result = client_cli(
        "send", "x", *_target(proxy_server), "--proxy-protocol", "v1", "--proxy-source", "[2001:db8::1]:5", "--banner"
    )
    assert result.returncode == 2
    assert _one_line(result.stderr) == (
        "echo-client: --proxy-source: the source 2001:db8::1 is IPv6 but the server's address 127.0.0.1 is IPv4: "
        "a PROXY header carries one family"
    )


# --- UDP ---------------------------------------------------------------------------------------


def _udp_server(*args: str) -> ServerProcess:
    return ServerProcess("--port", "0", "--admin-port", "off", "--udp-port", "0", *args)


def test_send_and_ping_over_udp() -> None:
    server = _udp_server()
    try:
        host, port = address_of(server.wait_for("listening"), "udp_address")
        server.start()
        sent = client_cli("send", "--udp", "datagram", host, str(port))
        assert (sent.returncode, sent.stdout, sent.stderr) == (0, b"datagram", b"")
        ping = client_cli("ping", "--udp", "-c", "4", "-s", "1200", "--json", host, str(port))
    finally:
        server.stop()
    assert ping.returncode == 0, ping.stderr
    report = json.loads(ping.stdout)
    assert (report["transport"], report["sent"], report["received"], report["loss_percent"]) == ("udp", 4, 4, 0)
    assert 0 < report["min_ms"] <= report["avg_ms"] <= report["max_ms"] and len(report["times_ms"]) == 4


def test_ping_counts_the_datagrams_that_do_not_come_back() -> None:
    # One datagram a second per source, bursts of one: the first is echoed, the next are
    # dropped by the server's rate limit for the next ten seconds.
    server = _udp_server("--udp-rate", "0.1")
    try:
        host, port = address_of(server.wait_for("listening"), "udp_address")
        server.start()
        ping = client_cli("ping", "--udp", "-c", "3", "--timeout", "0.3", host, str(port))
    finally:
        server.stop()
    lines = ping.stdout.decode().splitlines()
    assert ping.returncode == 1, ping
    assert lines[1:3] == ["no echo for seq=2 within 0.3 s", "no echo for seq=3 within 0.3 s"]
    assert re.fullmatch(r"3 sent, 1 received, 66\.7% loss, time \d+ ms", lines[-2]), lines
    assert lines[-1].startswith("rtt min/avg/max/p99 = ")


def test_a_closed_udp_port_is_named() -> None:
    # Only an unbound UDP port makes the kernel answer "port unreachable": this one was
    # the kernel's pick a moment ago (were it taken again meanwhile, we would time out).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    result = client_cli("send", "--udp", "x", "127.0.0.1", str(port), "--timeout", "5")
    assert result.returncode == 1
    assert _one_line(result.stderr).endswith(
        "refused the datagram (ICMP port unreachable): is the server's --udp-port open?"
    )


# --- options that do not fit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "x", "--ca", "ca.pem"], "echo-client send: --ca: needs --tls"),
        (["ping", "--key", "k.pem", "--tls"], "echo-client ping: --key: needs --cert"),
        (["send", "x", "--tls", "--ca", "/nonexistent/ca.pem"], "echo-client send: --ca: no PEM CA certificate in "),
        (["send", "x", "--tls", "--alpn", "h2,,x"], "echo-client send: --alpn: expected comma-separated"),
        (["send", "x", "--udp", "--tls"], "echo-client send: --udp: not with --tls (UDP echo has no TLS)"),
        (["ping", "--udp", "--banner"], "echo-client ping: --udp: not with --banner (UDP echo has no banner)"),
        (["ping", "--udp", "-s", "65508"], "echo-client ping: --udp: a datagram holds at most 65507 bytes, got 65508"),
        (["bench", "--proxy-source", "192.0.2.1:1"], "echo-client bench: --proxy-source: needs --proxy-protocol"),
        (["send", "x", "--proxy-protocol", "v2", "--proxy-source", "host:1"], "--proxy-source: expected an IP"),
        (["send", "x", "--proxy-protocol", "v3"], "echo-client send: --proxy-protocol: invalid choice: 'v3'"),
        (["send", "x", "--expect-banner", "("], "echo-client send: --expect-banner: not a regular expression"),
        (["bench", "--udp"], "echo-client bench: unrecognized arguments: --udp"),
    ],
)
def test_options_that_do_not_fit_are_one_line_naming_the_option(args: list[str], message: str) -> None:
    result = client_cli(*args, "--port", "1")
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith(message) or message in result.stderr.decode(), result.stderr


# --- without a server -------------------------------------------------------------------------


def test_the_banner_is_read_to_its_line_end_and_not_one_byte_further() -> None:
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        client_side.settimeout(5)
        server_side.sendall(b"replica-1 192.0.2.1:5\r\nalready echo")  # one segment: line and more
        options = DialOptions(expect_banner=r"^replica-\d ")
        assert read_banner(client_side, options, "peer", 5) == "replica-1 192.0.2.1:5"
        assert client_side.recv(100) == b"already echo"
        server_side.sendall(b"x" * BANNER_MAX_BYTES)
        with pytest.raises(BannerError, match=f"sent {BANNER_MAX_BYTES} bytes without a line end"):
            read_banner(client_side, options, "peer", 5)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"replica-1 127.0.0.1:5\nrest", "replica-1 127.0.0.1:5"),
        (b"caf\xc3\xa9 \xe2\x9c\x93\r\n", "café ✓"),
        (b"no line end yet", None),
        (b"\n", None),  # empty
        (b"\x1b[2J\n", None),  # an escape sequence is no banner
        (b"\xff\xfe\n", None),  # not UTF-8
        (b"x" * BANNER_MAX_BYTES + b"\n", None),  # too long for one
    ],
)
def test_what_looks_like_a_banner_line(data: bytes, line: str | None) -> None:
    assert first_line(data) == line


def test_text_from_the_network_is_shown_quoted_escaped_and_cut() -> None:
    assert shown("host\x1b[31m") == "'host\\x1b[31m'"
    assert shown("y" * 500) == repr("y" * 120 + "...")
