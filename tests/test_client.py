"""The EchoClient library and the echo-client command against real servers."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import socket
import subprocess
import sys
import tty
from pathlib import Path
from typing import Any

import pytest

from client.cli import BINARY_REFUSED, SUBCOMMANDS, build_parser
from client.library import ConnectFailed, ConnectionReset, EchoClient, EchoMismatch, EchoTimeout, ShortEcho
from tests.conftest import ServerFactory
from tests.faulty import FaultyServer
from tests.helpers import ROOT, closed_port


def client_cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_echo_round_trips_large_payloads(make_server: ServerFactory) -> None:
    server, _ = make_server()
    payload = os.urandom(8 << 20)  # larger than socket buffers: needs send and recv at once
    with EchoClient(*server.server_address[:2]) as client:
        assert client.echo(payload) == payload
        assert client.echo(b"") == b""
        client.send(b"stream")
        client.close_write()
        assert client.recv() == b"stream"
        assert client.recv() == b""


def test_refused_is_a_clear_error() -> None:
    with closed_port() as port, pytest.raises(ConnectFailed, match="refused"):
        EchoClient("127.0.0.1", port).connect()


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("corrupt", EchoMismatch, "differs from what was sent, first at byte 5"),
        ("close", ShortEcho, "closed the connection after 0 of 10 bytes"),
        ("reset", ConnectionReset, "reset the connection"),
    ],
)
def test_a_faulty_server_is_named_for_what_it_did(mode: str, error: type[Exception], message: str) -> None:
    with (
        FaultyServer(mode) as faulty,
        EchoClient(*faulty.address) as client,
        pytest.raises(error, match=message),
    ):
        client.echo(b"0123456789")


def test_a_silent_server_times_out() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as silent,  # accepts (in the kernel), never answers
        EchoClient(*silent.getsockname()[:2], timeout=0.2) as client,
        pytest.raises(EchoTimeout, match="0 of 4 bytes"),
    ):
        client.echo(b"ping")


def test_interactive_mode_through_a_pipe(make_server: ServerFactory) -> None:
    server, _ = make_server()
    host, port = server.server_address[:2]
    text = b"first line\nsecond line\n" + bytes(range(256))
    result = client_cli(host, str(port), stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text


def test_send_prints_the_verified_echo(make_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = make_server()
    host, port = server.server_address[0], str(server.server_address[1])
    assert client_cli("send", "hello there", host, port).stdout == b"hello there"  # a pipe: no newline added
    assert client_cli("send", "alias", "--port", port, "--host", host).stdout == b"alias"
    quiet = client_cli("send", "--quiet", "shh", host, port)
    assert quiet.returncode == 0 and quiet.stdout == b""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(300_000))
    from_file = client_cli("send", "--file", str(blob), host, port)
    assert from_file.returncode == 0 and from_file.stdout == blob.read_bytes()


def test_send_exits_2_on_a_mismatch_and_1_when_unreachable() -> None:
    with FaultyServer("corrupt") as faulty:
        mismatch = client_cli("send", "0123456789", *map(str, faulty.address))
    assert mismatch.returncode == 2 and b"differs" in mismatch.stderr
    with closed_port() as port:
        refused = client_cli("send", "x", "127.0.0.1", str(port))
    assert refused.returncode == 1
    assert refused.stderr.decode().strip().count("\n") == 0 and b"refused" in refused.stderr
    # A name the resolver refuses without asking a name server: no DNS query leaves loopback.
    unknown = client_cli("send", "x", "no such host")
    assert unknown.returncode == 1 and b"cannot resolve" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--conns", "0"],
        ["ping", "-c", "x"],
        ["send"],
        ["--bogus"],
        ["send", "a", "host", "1", "extra"],
        ["ping", "host", "--host", "other"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = client_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in result.stderr


def test_ping_reports_round_trip_times(make_server: ServerFactory) -> None:
    server, _ = make_server()
    result = client_cli("ping", "-c", "5", *map(str, server.server_address[:2]))
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0
    assert sum("seq=" in line for line in lines) == 5
    target = f"127.0.0.1:{server.server_address[1]}"
    assert lines[-3] == f"--- {target} echo statistics ---"
    assert re.fullmatch(r"5 sent, 5 received, 0% loss, time \d+ ms", lines[-2]), lines[-2]
    figures = re.fullmatch(r"rtt min/avg/max/p99 = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", lines[-1])
    assert figures, lines[-1]
    low, average, high, p99 = map(float, figures.groups())
    assert 0 < low <= average <= high and low <= p99 <= high


def bench_json(address: tuple[Any, ...], *, conns: int, size: int, pipeline: int, idle: int) -> dict[str, Any]:
    """``echo-client bench --json`` against ``address`` for 1 s on 2 processes: its report (exit 0 asserted)."""
    host, port = address[:2]
    result = client_cli(
        "bench",
        host,
        str(port),
        *("--conns", str(conns), "--size", str(size), "--pipeline", str(pipeline), "--idle", str(idle)),
        *("--duration", "1", "--processes", "2", "--json"),
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_bench_json_has_the_figures_and_no_errors(make_server: ServerFactory) -> None:
    server, _ = make_server()
    report = bench_json(server.server_address, conns=8, size=512, pipeline=2, idle=20)
    assert report["errors"] == {} and report["mismatches"] == 0
    assert report["messages"] > 100 and report["msgs_per_s"] > 100 and report["mb_per_s"] > 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["connected"] == 8 and report["idle_open_at_end"] == 20


def test_bench_counts_mismatches_against_a_corrupting_server() -> None:
    with FaultyServer("corrupt") as faulty:
        result = client_cli(
            "bench", *map(str, faulty.address), "--conns", "2", "--duration", "0.5", "--processes", "1", "--json"
        )
    assert result.returncode == 1
    assert json.loads(result.stdout)["mismatches"] > 0


def test_interactive_mode_says_when_the_server_refuses_it(make_server: ServerFactory) -> None:
    server, _ = make_server(max_connections=1)
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as held:
        held.sendall(b"x")
        held.recv(1)
        # stdin stays open, so the server's close (the rejection) is what ends it.
        client = subprocess.Popen(
            [sys.executable, "-m", "client", host, str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert client.wait(timeout=30) == 1
            assert client.stderr is not None and client.stdout is not None
            assert client.stderr.read() == b"echo-client: the server closed the connection\n"
            assert client.stdout.read() == b""
        finally:
            for pipe in (client.stdin, client.stdout, client.stderr):
                if pipe:
                    pipe.close()


def test_bench_shows_live_progress_on_a_terminal_only(make_server: ServerFactory) -> None:
    server, _ = make_server()
    port = str(server.server_address[1])
    args = [
        sys.executable,
        "-m",
        "client",
        "bench",
        "--port",
        port,
        "--conns",
        "2",
        "--duration",
        "1.2",
        "--processes",
        "1",
    ]
    controller, terminal = pty.openpty()  # stderr is a real terminal
    with subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal) as bench:
        os.close(terminal)
        shown = read_terminal(controller)
        assert bench.wait(timeout=60) == 0
    os.close(controller)
    assert b"\recho-client bench:" in shown and b"load processes finished" in shown
    piped = client_cli("bench", "--port", port, "--conns", "2", "--duration", "0.5", "--processes", "1")
    assert piped.returncode == 0 and piped.stderr == b""  # no progress noise in a pipe


def on_terminal(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Run echo-client with stdout on a raw pseudo-terminal (no newline translation):
    (exit code, what the terminal was sent, stderr)."""
    controller, terminal = pty.openpty()
    tty.setraw(terminal)
    with subprocess.Popen(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=terminal,
        stderr=subprocess.PIPE,
    ) as process:
        os.close(terminal)
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(stdin)
        process.stdin.close()
        shown = read_terminal(controller)
        code = process.wait(timeout=60)
        errors = process.stderr.read()
    os.close(controller)
    return code, shown, errors


def read_terminal(controller: int) -> bytes:
    """Everything written to a pseudo-terminal until the last process holding it exits."""
    shown = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    return bytes(shown)


def test_send_ends_its_echo_with_a_newline_on_a_terminal_only(make_server: ServerFactory) -> None:
    server, _ = make_server()
    target = [server.server_address[0], str(server.server_address[1])]
    assert on_terminal("send", "hi", *target) == (0, b"hi\n", b"")
    assert on_terminal("send", "line\n", *target) == (0, b"line\n", b"")  # no second newline
    assert client_cli("send", "hi", *target).stdout == b"hi"


def test_binary_is_not_written_to_a_terminal_without_force(make_server: ServerFactory, tmp_path: Path) -> None:
    server, recorder = make_server()
    target = [server.server_address[0], str(server.server_address[1])]
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x1b]0;owned\x07" + bytes(range(256)))  # an escape sequence, then everything
    refused = on_terminal("send", "--file", str(blob), *target)
    assert refused == (2, b"", f"echo-client send: {BINARY_REFUSED}\n".encode())
    assert recorder.named("opened") == []  # refused before sending anything
    forced = on_terminal("send", "--force", "--file", str(blob), *target)
    assert forced == (0, blob.read_bytes() + b"\n", b"")
    text = "naïve café: ✓\n".encode()
    assert on_terminal("send", "--file", str(_write(tmp_path / "text", text)), *target) == (0, text, b"")
    piped = on_terminal(*target, stdin=b"fine\n" + bytes(range(32)))
    assert piped[0] == 2 and piped[2] == f"echo-client: {BINARY_REFUSED}\n".encode()
    assert b"\x1b" not in piped[1] and b"\x00" not in piped[1]
    assert on_terminal(*target, "--force", stdin=bytes(range(32)))[:2] == (0, bytes(range(32)))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["send", "hi", "127.0.0.1", "x"],
        ["ping", "127.0.0.1", "70000"],
        ["bench", "--port", "x"],
        ["127.0.0.1", "-1"],
    ],
)
def test_a_bad_port_is_named(args: list[str]) -> None:
    result = client_cli(*args)
    bad = args[-1]
    assert result.returncode == 2
    assert result.stderr.decode().endswith(f": port: expected 1-65535, got '{bad}'\n")
    assert result.stderr.count(b"\n") == 1


def test_version_and_help_for_every_option() -> None:
    version = client_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"echo-client ") and version.stdout.count(b"\n") == 1
    for command in (None, *SUBCOMMANDS):
        parser = build_parser(command)
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (command, action.option_strings or action.dest)
        assert client_cli(*([command] if command else []), "--help").returncode == 0


def test_ping_json(make_server: ServerFactory) -> None:
    server, _ = make_server()
    result = client_cli("ping", "-c", "3", "-s", "100", "--json", *map(str, server.server_address[:2]))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 3 and report["size"] == 100 and len(report["times_ms"]) == 3
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["target"] == f"127.0.0.1:{server.server_address[1]}"


def test_a_clean_bench_ends_every_connection_with_eof(make_server: ServerFactory) -> None:
    server, recorder = make_server()
    # Deep pipelines of large messages: at the end, echo is always in flight.
    assert bench_json(server.server_address, conns=6, size=16384, pipeline=8, idle=2)["errors"] == {}
    total = 1 + 6 + 2  # the reachability probe, the busy connections, the idle ones
    recorder.wait_for(lambda _: len(recorder.named("closed")) >= total)
    reasons = [e.data["reason"] for e in recorder.named("closed")]
    assert reasons == ["eof"] * total


def test_interactive_mode_reads_a_regular_file_on_stdin(make_server: ServerFactory, tmp_path: Path) -> None:
    server, recorder = make_server()
    source = _write(tmp_path / "lines.txt", b"one line of many\n" * 20000)  # no selector takes a file
    with source.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "client", *map(str, server.server_address[:2])],
            cwd=ROOT, stdin=stdin, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, b"") and result.stdout == source.read_bytes()
    closed = recorder.wait_for(lambda e: e.name == "closed")
    assert closed.data["reason"] == "eof" and closed.data["bytes_in"] == len(result.stdout)
