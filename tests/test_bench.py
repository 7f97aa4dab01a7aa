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
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import chart, churn_bench, noise, report, servers, warmup
from tests.helpers import ROOT, closed_port, echo_round_trip, read_exactly, run_cli

SVG = "{http://www.w3.org/2000/svg}"


def test_bench_driver_writes_json_markdown_and_svg(tmp_path: Path) -> None:
    result = run_cli(
        [
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
        timeout=180,
        module="loadtest.bench",
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
    warmup.warm_up((str(address[0]), int(address[1])), 3, 512, 0.2, 1)
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
            warmup.echo_and_close(listener.getsockname()[:2], 64)
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
    ticks = chart.nice_ticks(peak)
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
    drawn = ElementTree.fromstring(chart.svg([entry]))
    labels = [t.text or "" for t in drawn.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert labels == ["0", "20,000", "40,000", "60,000", "80,000", "100,000", "0", "10", "20", "30", "40"]


def test_admin_port_gives_every_echo_service_row_the_admin_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "SERVERS", {name: list(command) for name, command in servers.SERVERS.items()})
    servers.watch_admin(7108)
    for name, command in servers.SERVERS.items():
        if name.startswith("echo-service") and command:
            assert command[command.index("--admin-port") + 1] == "7108", name
        else:
            assert "7108" not in command, name


# --- the churn scenario ---------------------------------------------------------------------


def test_churn_load_keeps_its_rate_and_closes_every_connection(recording_server: _RecordingEcho) -> None:
    host, port = recording_server.server_address[:2]
    edges: list[tuple[str, float]] = []
    spec = churn_bench.ChurnSpec(str(host), int(port), rate=300, duration_s=0.6, warmup_s=0.2)
    result = churn_bench.run(spec, on_window=lambda edge: edges.append((edge, time.monotonic())))
    assert [edge for edge, _ in edges] == ["start", "end"]
    assert edges[1][1] - edges[0][1] == pytest.approx(0.6, abs=0.15)
    assert result.offered == pytest.approx(180, abs=2)  # 300 a second over 0.6 s, warm-up excluded
    assert result.errors == {} and result.skipped == 0
    assert result.offered - 30 <= result.completed <= result.offered + 30  # in flight at the edges
    assert result.attempts == pytest.approx(240, abs=3) and result.cpu_s > 0
    assert 0 < result.latency_ms(0.5) <= result.latency_ms(0.99)
    figures = result.figures(server_cpu_s=0.06, duration_s=0.6)
    assert figures["cpu_us_per_conn"] == pytest.approx(0.06e6 / result.completed, rel=0.01)
    assert figures["offered_per_s"] == pytest.approx(300, abs=4)
    with recording_server.lock:
        log = list(recording_server.log)
    opened = [n for kind, n in log if kind == "open"]
    closed = [n for kind, n in log if kind == "close"]
    assert len(opened) == result.attempts and sorted(closed) == sorted(opened)  # every one ended by EOF


def test_churn_load_counts_refused_connections() -> None:
    with closed_port() as port:
        result = churn_bench.run(churn_bench.ChurnSpec("127.0.0.1", port, rate=200, duration_s=0.3, warmup_s=0))
    assert result.completed == 0 and set(result.errors) == {"refused"} and result.offered == pytest.approx(60, abs=2)
    assert result.errors["refused"] == pytest.approx(result.offered, abs=3)  # those at the window's edges


class _CloseAtOnce(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass  # the server closes the connection without echoing a byte


def test_churn_load_counts_a_server_that_closes_without_echoing() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _CloseAtOnce)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="close-at-once")
    thread.start()
    try:
        host, port = server.server_address[:2]
        result = churn_bench.run(churn_bench.ChurnSpec(str(host), int(port), rate=200, duration_s=0.3, warmup_s=0.1))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert result.completed == 0 and result.offered == pytest.approx(60, abs=2)
    assert set(result.errors) <= {"wrong", "reset"} and sum(result.errors.values()) >= result.offered - 5


def test_churn_load_needs_more_processes_for_more_than_one_can_offer() -> None:
    assert churn_bench.processes_for(100) == 1
    assert churn_bench.processes_for(churn_bench.ONE_PROCESS_RATE) == 1
    assert churn_bench.processes_for(churn_bench.ONE_PROCESS_RATE + 1) == 2


# --- noisy rows ------------------------------------------------------------------------------

# A busy loop for argv[1] seconds, saying when it starts and, at the end, its CPU time.
BUSY = """import sys, time
print("busy", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
print(time.process_time())
"""


def test_noise_window_blames_a_busy_process_outside_the_tree_and_only_then() -> None:
    """Two windows over the same second: one rooted at this process (the busy child is
    ours), one rooted at an idle child (the busy one is someone else's)."""
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ours, theirs = noise.NoiseWindow([os.getpid()]), noise.NoiseWindow([idle.pid])
        ours.start()
        theirs.start()
        busy = subprocess.run([sys.executable, "-c", BUSY, "1.0"], capture_output=True, text=True, check=True)
        theirs.stop()
        ours.stop()
    finally:
        assert idle.stdin is not None
        idle.stdin.close()
        idle.wait(10)
    assert ours.others_cores is not None and theirs.others_cores is not None
    busy_cores = float(busy.stdout.split()[-1]) / theirs.seconds
    assert busy_cores > 0.05, "the busy child got no CPU at all"
    # Reaped, the busy child's time is in this process's children time: ours, not others'.
    assert ours.ours_cores == pytest.approx(busy_cores, abs=0.05 + 0.1 * busy_cores)
    assert theirs.others_cores >= busy_cores - 0.05
    assert theirs.others_cores - ours.others_cores == pytest.approx(busy_cores, abs=0.05 + 0.15 * busy_cores)
    assert theirs.noisy(busy_cores / 2) and not theirs.noisy(theirs.others_cores + 0.01)


def test_a_window_that_was_never_closed_counts_as_noisy() -> None:
    window = noise.NoiseWindow([os.getpid()])
    window.start()  # and no stop(): a row whose end of window failed
    assert window.noisy(threshold_cores=1e9)
    row, discarded = noise.rerun_while_noisy(lambda: {"server": "s", "scenario": "t", "others_cores": None}, 0.1, 1)
    assert row["noisy"] and len(discarded) == 1


def test_a_noisy_row_is_run_again_at_most_noise_retries_times() -> None:
    others = iter([0.5, 0.3, 0.02, 0.9, 0.9, 0.9])

    def measure() -> dict[str, Any]:
        return {"server": "s", "scenario": "t", "others_cores": next(others)}

    row, discarded = noise.rerun_while_noisy(measure, 0.1, 2)
    assert (row["others_cores"], row["noisy"], row["attempt"]) == (0.02, False, 2)
    assert [d["others_cores"] for d in discarded] == [0.5, 0.3] and all(d["noisy"] for d in discarded)
    row, discarded = noise.rerun_while_noisy(measure, 0.1, 2)
    assert (row["noisy"], row["attempt"], len(discarded)) == (True, 2, 2)  # kept, flagged: retries spent
    with pytest.raises(StopIteration):
        next(others)  # exactly 1 + 2 attempts each time


def test_the_table_flags_noisy_repeats_and_shows_churn_per_connection() -> None:
    churn = "churn: short connections, info logging"

    def row(server: str, repeat: int, cpu: float, noisy: bool) -> dict[str, Any]:
        return {
            "scenario": churn, "server": server, "repeat": repeat, "offered_per_s": 500.0, "conns_per_s": 498.0,
            "late_fraction": 0.01, "p50_ms": 0.4, "p99_ms": 2.0, "cpu_us_per_conn": cpu, "peak_rss_mib": 20.0,
            "errors": 0, "others_cores": 0.5 if noisy else 0.01, "noisy": noisy, "attempt": 2 if noisy else 0,
            "log_lines_per_conn": 2.0 if server == "echo-service" else 0.0,
        }  # fmt: skip

    rows = [row("echo-service", 0, 120, True), row("asyncio-protocol", 0, 100, False)]
    rows += [row("echo-service", 1, 90, False), row("asyncio-protocol", 1, 100, False)]
    summary = report.summarize(rows)
    ratio_list = report.ratios(rows)
    [ratio] = ratio_list
    assert ratio["cpu_per_conn"] == {"median": 1.05, "min": 0.9, "max": 1.2} and "cpu_per_msg" not in ratio
    assert (ratio["pairs"], ratio["noisy_pairs"]) == (2, 1)
    document = {
        "machine": {"cpus": 2, "python": "3.11", "server_cpus": [0], "load_cpus": [1]},
        "settings": {"repeats": 2, "duration_s": 1.0, "noise_threshold_cores": 0.1, "noise_retries": 2,
                     "churn_rate": 500.0, "churn_processes": 1},
        "summary": summary, "ratios": ratio_list, "targets": report.targets(summary, ratio_list),
    }  # fmt: skip
    table = report.markdown(document)
    assert "| echo-service | 500 | 1% | 498 | 0.400 | 2.000 | 2.00 | 105.00 (90.00-120.00) | - |" in table
    assert "| 0.26 (0.01-0.50) **noisy** 1/2 |" in table
    assert "| asyncio-protocol | 500 |" in table and "CPU us/conn" in table
    assert "| CPU per connection <= 1x asyncio Protocol (churn" in table and "| **no** | 1.05x (0.90-1.20) |" in table
    assert summary[0]["reruns"] == 2 and summary[1]["reruns"] == 0
    assert "| asyncio-protocol | 1.00x (1.00-1.00) | 1.05x (0.90-1.20) | 1/2 |" in table


@pytest.mark.slow
def test_bench_churn_rows_beside_a_busy_neighbour_are_flagged_and_rerun(tmp_path: Path) -> None:
    """The churn scenario for real, with a baseline checkout (this one) and a busy process
    (not the bench's) running through every window: every row is noisy, run twice."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY, "600"], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline() == "busy\n"
        result = subprocess.run(
            [sys.executable, "-m", "loadtest.bench", "--repeats", "1", "--duration", "0.6", "--warmup", "0.2",
             "--scenarios", "7", "--servers", "echo-service,asyncio-protocol", "--baseline", str(ROOT),
             "--churn-rate", "400", "--noise-retries", "1", "--out", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        busy.kill()
        busy.wait(10)
        if busy.stdout:
            busy.stdout.close()
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["churn_rate"] == 400 and document["settings"]["churn_processes"] == 1
    rows = {row["server"]: row for row in document["rows"]}
    assert set(rows) == {"echo-service", "asyncio-protocol", servers.BASELINE_SERVER}
    for row in rows.values():
        assert row["scenario"].startswith("churn") and row["errors"] == 0, row
        assert row["offered_per_s"] == pytest.approx(400, abs=5)
        assert 0 <= row["conns_per_s"] <= 2 * 400 and 0 <= row["late_fraction"] <= 1
        if row["conns_per_s"]:
            assert 1 < row["cpu_us_per_conn"] < 100_000 and row["load_cpu_us_per_conn"] > 1
        else:  # a busy machine starved the load generator or the server for the whole window
            assert row["cpu_us_per_conn"] is None  # no figure rather than a made-up one
        assert row["noisy"] and row["attempt"] == 1 and row["others_cores"] > 0.1, row
    assert any(row["conns_per_s"] > 100 for row in rows.values())
    # echo-service logged at info, two lines a connection (opened, closed); asyncio logs nothing.
    for name in ("echo-service", servers.BASELINE_SERVER):
        if rows[name]["conns_per_s"] > 100:
            assert 1.5 <= rows[name]["log_lines_per_conn"] <= 2.5, rows[name]
    assert rows["asyncio-protocol"]["log_lines_per_conn"] in (0, None)
    assert sorted(a["server"] for a in document["noisy_attempts"]) == sorted(rows)
    ratios = {r["versus"]: r for r in document["ratios"]}
    assert set(ratios) == {"asyncio-protocol", servers.BASELINE_SERVER}
    for ratio in ratios.values():
        assert ratio["cpu_per_conn"]["median"] > 0 and "cpu_per_msg" not in ratio
    targets = {t["target"].split(" (")[0] for t in document["targets"]}
    assert {"CPU per connection <= 1x asyncio Protocol", "CPU per connection <= 1.05x the baseline"} <= targets
    table = (tmp_path / "results.md").read_text()
    assert "**noisy** 1/1 |" in table and "CPU us/conn" in table


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [("--churn-rate", "0", "> 0"), ("--noise-threshold", "-0.5", ">= 0"), ("--noise-retries", "-1", ">= 0")],
)
def test_a_bad_churn_or_noise_setting_is_one_line_and_exit_2(flag: str, value: str, why: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", flag, value], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith(f"error: {flag} must be {why}, not {float(value):g}")
