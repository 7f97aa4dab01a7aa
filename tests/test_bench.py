"""The benchmark driver: its warm-up, the C reference server, ratios and the chart.

The smoke test runs one scenario on three servers with a short window; the others are
unit tests of the pieces (a recording echo server shows what the warm-up did).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import bench, report, servers
from tests.helpers import ROOT, echo_round_trip, read_exactly

SVG = "{http://www.w3.org/2000/svg}"


def test_bench_driver_writes_json_markdown_and_svg(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--repeats",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--scenarios",
            "1",
            "--servers",
            "echo-service,asyncio-protocol,c-epoll",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["warmup_s"] == 0.2 and "closed" in document["settings"]["warm_up"]
    servers = {"echo-service", "asyncio-protocol"}
    if shutil.which("cc"):
        servers.add("c-epoll")
        assert document["skipped"] == {}
    else:
        assert document["skipped"] == {"c-epoll": "no C compiler (cc) on PATH"}
    assert len(document["rows"]) == 2 * len(servers)
    for row in document["rows"]:
        assert row["scenario"] == "50 conns, 1 KiB"
        assert row["errors"] == 0 and row["msgs_per_s"] > 1000
        assert row["cpu_us_per_msg"] > 0 and row["peak_rss_mib"] > 0.1
    summary = {entry["server"]: entry for entry in document["summary"]}
    assert set(summary) == servers
    rates = summary["echo-service"]["msgs_per_s"]
    assert rates["min"] <= rates["median"] <= rates["max"] and summary["echo-service"]["repeats"] == 2
    assert {r["versus"] for r in document["ratios"]} == servers - {"echo-service"}
    for ratio in document["ratios"]:
        assert ratio["throughput"]["min"] <= ratio["throughput"]["median"] <= ratio["throughput"]["max"]
    expected = {"throughput >= 0.9x asyncio Protocol", "CPU per message <= 1.1x asyncio Protocol"}
    if "c-epoll" in servers:
        expected.add("CPU per message <= 2x the C epoll server")
    assert {t["target"].split(" (")[0] for t in document["targets"]} == expected
    table = (tmp_path / "results.md").read_text()
    assert "| echo-service |" in table and "## Targets" in table and "warmed up alike" in table
    chart = ElementTree.parse(tmp_path / "results.svg").getroot()
    assert chart.tag.endswith("svg") and len(chart.findall(f"{SVG}rect")) >= 5


# --- the warm-up ------------------------------------------------------------------------


class _RecordingEcho(socketserver.ThreadingTCPServer):
    """An echo server that records ("open", n) and ("close", n) in order."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.log: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.count = 0


class _RecordingHandler(socketserver.BaseRequestHandler):
    server: _RecordingEcho

    def handle(self) -> None:
        with self.server.lock:
            self.server.count += 1
            number = self.server.count
            self.server.log.append(("open", number))
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass
        with self.server.lock:
            self.server.log.append(("close", number))


@pytest.fixture
def recording_server() -> Iterator[_RecordingEcho]:
    server = _RecordingEcho()
    thread = threading.Thread(target=server.serve_forever, name="recording-echo")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_warm_up_closes_a_connection_before_any_other_opens(recording_server: _RecordingEcho) -> None:
    address = recording_server.server_address
    bench.warm_up((str(address[0]), int(address[1])), bench.Scenario("t", 3, 512), 0.2, 1)
    with recording_server.lock:
        log = list(recording_server.log)
    # The first connection was opened, echoed and closed by the server before the load began.
    assert log[:2] == [("open", 1), ("close", 1)], log
    # Then the warm-up load: the scenario's 3 connections, which the bench also closes.
    assert sorted(n for kind, n in log if kind == "open") == [1, 2, 3, 4]


def test_echo_and_close_notices_a_server_that_does_not_echo() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[socket.socket] = []

        def accept_and_drop() -> None:
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.shutdown(socket.SHUT_WR)  # EOF with no echo

        thread = threading.Thread(target=accept_and_drop)
        thread.start()
        with pytest.raises(RuntimeError, match="warm-up: echo of 64 bytes"):
            bench.echo_and_close(listener.getsockname()[:2], 64)
        thread.join(10)
        for conn in accepted:
            conn.close()


# --- the C reference server -------------------------------------------------------------


@pytest.fixture
def c_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH: the bench skips the c-epoll row")
    assert servers.build_c_server(tmp_path) is None
    proc = subprocess.Popen(servers.SERVERS[servers.C_SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    _, host, port = proc.stdout.readline().split()
    yield host, int(port)
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def test_c_server_echoes_every_byte_in_order(c_server: tuple[str, int]) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    assert echo_round_trip(c_server, payload) == payload


def test_c_server_holds_a_client_that_reads_late(c_server: tuple[str, int]) -> None:
    """A client sends 4 MiB before reading a byte: partial writes must keep every byte."""
    payload = os.urandom(4 * 1024 * 1024)
    with socket.create_connection(c_server, timeout=30) as sock:
        sent = threading.Event()

        def writer() -> None:
            sock.sendall(payload)
            sent.set()

        thread = threading.Thread(target=writer)
        thread.start()
        assert read_exactly(sock, len(payload)) == payload
        thread.join(30)
        assert sent.is_set()


def test_a_missing_compiler_skips_the_c_row_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert servers.build_c_server(tmp_path) == "no C compiler (cc) on PATH"


# --- ratios and the chart -----------------------------------------------------------------


def _row(server: str, repeat: int, rate: float, cpu: float) -> dict[str, Any]:
    return {"scenario": "s", "server": server, "repeat": repeat, "msgs_per_s": rate, "cpu_us_per_msg": cpu}


def test_ratios_pair_servers_repeat_by_repeat() -> None:
    rows = [
        _row("echo-service", 0, 100, 10),
        _row("asyncio-protocol", 0, 50, 20),
        _row("echo-service", 1, 90, 12),
        _row("asyncio-protocol", 1, 100, 10),
        _row("echo-service", 2, 80, 10),
        _row("asyncio-protocol", 2, 80, 10),
    ]
    [ratio] = report.ratios(rows)
    assert ratio["versus"] == "asyncio-protocol"
    assert ratio["throughput"] == {"median": 1.0, "min": 0.9, "max": 2.0}
    assert ratio["cpu_per_msg"] == {"median": 1.0, "min": 0.5, "max": 1.2}


@pytest.mark.parametrize("peak", [0.013, 0.7, 1, 3.2, 7, 10, 36.3, 82.5, 98_944, 107_007, 1e6])
def test_axis_ticks_are_round_and_cover_the_peak(peak: float) -> None:
    ticks = report.nice_ticks(peak)
    step = ticks[1]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 5)), ticks
    assert ticks[0] == 0 and ticks[-1] >= peak and ticks[-2] < peak and len(ticks) <= 6
    assert all(math.isclose(b - a, step) for a, b in itertools.pairwise(ticks))


def test_chart_labels_its_axes_with_round_numbers() -> None:
    entry = {
        "scenario": "s",
        "server": "echo-service",
        "msgs_per_s": {"median": 90_111, "min": 80_000, "max": 98_944},
        "cpu_us_per_msg": {"median": 9.5, "min": 9.1, "max": 36.3},
    }
    chart = ElementTree.fromstring(report.svg([entry]))
    labels = [t.text or "" for t in chart.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert labels == ["0", "20,000", "40,000", "60,000", "80,000", "100,000", "0", "10", "20", "30", "40"]


def test_admin_port_gives_every_echo_service_row_the_admin_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "SERVERS", {name: list(command) for name, command in servers.SERVERS.items()})
    servers.watch_admin(7108)
    for name, command in servers.SERVERS.items():
        if name.startswith("echo-service") and command:
            assert command[command.index("--admin-port") + 1] == "7108", name
        else:
            assert "7108" not in command, name
