"""The real Locust, headless, against a real server: smoke, failure, distributed."""

from __future__ import annotations

import csv
import http.client
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.faulty import FaultyServer
from tests.helpers import ROOT

# Never import locust here: importing it monkey-patches this whole process with gevent.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")
LOCUSTFILE = str(ROOT / "loadtest" / "locustfile.py")
ECHO_OPTIONS = {  # dest -> default, as loadtest/locust.conf sets them
    "echo_small_bytes": 64,
    "echo_large_bytes": 16384,
    "echo_connect_timeout": 5.0,
    "echo_read_timeout": 5.0,
    "echo_think_time": 0.05,
    "echo_max_p95_ms": 500.0,
}


def locust(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    return subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", LOCUSTFILE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows(prefix: Path) -> dict[str, dict[str, Any]]:
    with open(f"{prefix}_stats.csv", newline="") as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def test_headless_smoke_run_passes(make_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = make_server()
    host, port = server.server_address[:2]
    run = locust(
        "--headless",
        "-u",
        "50",
        "-r",
        "50",
        "-t",
        "20s",
        "--host",
        f"tcp://{host}:{port}",
        "--csv",
        str(tmp_path / "smoke"),
        "--only-summary",
        cwd=tmp_path,
    )
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    verdicts = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 1 and re.fullmatch(r"PASS: \d+ requests, 0 failures, p95 \d+ ms <= 500 ms", verdicts[0])
    assert output.rstrip().endswith(verdicts[0]), "the verdict is the last line"
    stats = rows(tmp_path / "smoke")
    assert int(stats["Aggregated"]["Request Count"]) > 0
    assert int(stats["Aggregated"]["Failure Count"]) == 0, output
    assert int(stats["echo 64B"]["Request Count"]) > 0
    assert int(stats["echo 16384B"]["Request Count"]) > 0
    assert stats["echo 64B"]["Type"] == "TCP"


def test_a_corrupting_server_fails_the_run(tmp_path: Path) -> None:
    with FaultyServer("corrupt") as faulty:
        run = locust(
            "--headless",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            "3s",
            "--host",
            f"{faulty.address[0]}:{faulty.address[1]}",
            "--csv",
            str(tmp_path / "bad"),
            "--only-summary",
            cwd=tmp_path,
        )
        output, _ = run.communicate(timeout=60)
    assert run.returncode == 1, output
    assert int(rows(tmp_path / "bad")["Aggregated"]["Failure Count"]) > 0
    assert "load test FAILED" in output and "differs" in output
    verdicts = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 1 and re.fullmatch(r"FAIL: \d+ of \d+ requests failed \([\d.]+%\)", verdicts[0])


def test_a_malformed_host_fails_at_start_with_one_line(tmp_path: Path) -> None:
    run = locust("--headless", "-u", "1", "-t", "2s", "--host", "http://nowhere", cwd=tmp_path)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 2
    assert [line for line in output.splitlines() if "locustfile:" in line] == [
        "locustfile: --host 'http://nowhere' is not tcp://HOST:PORT or HOST:PORT (port 1-65535)"
    ]
    assert "Traceback" not in output


def test_distributed_master_and_two_workers(make_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = make_server()
    host, port = server.server_address[:2]
    master = locust(
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        "0",
        "--expect-workers",
        "2",
        "--headless",
        "-u",
        "10",
        "-r",
        "10",
        "-t",
        "4s",
        "--host",
        f"tcp://{host}:{port}",
        "--csv",
        str(tmp_path / "dist"),
        cwd=tmp_path,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert master.stdout is not None
        for line in master.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    master_port = None
    while master_port is None:
        line = lines.get(timeout=60)
        assert line is not None, "".join(seen)
        seen.append(line)
        found = re.search(r"master listening for workers on port (\d+)", line)
        master_port = found and found.group(1)
    workers = [
        locust("--worker", "--master-host", "127.0.0.1", "--master-port", master_port, cwd=tmp_path) for _ in range(2)
    ]
    try:
        assert master.wait(timeout=120) == 0, "".join(seen)
        for worker in workers:
            worker.wait(timeout=60)
    finally:
        for process in (*workers, master):
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)
    while (line := lines.get(timeout=30)) is not None:
        seen.append(line)
    output = "".join(seen)
    assert re.search(r"2 workers connected", output), output
    stats = rows(tmp_path / "dist")
    assert int(stats["Aggregated"]["Request Count"]) > 0 and int(stats["Aggregated"]["Failure Count"]) == 0


class Lines:
    """A process's output lines, read on a thread; ``wait_for`` blocks on the next one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                self.queue.put(line)
            self.queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        while True:
            line = self.queue.get(timeout=timeout)
            assert line is not None, "".join(self.seen)
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found


def test_the_options_are_in_the_help(tmp_path: Path) -> None:
    # `locust -f loadtest/locustfile.py --help` cannot show them: Locust answers --help
    # before it imports the locustfile (locustio/locust#2917). The locustfile run as a
    # script prints Locust's own help with them.
    result = subprocess.run(
        [sys.executable, LOCUSTFILE, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--headless" in result.stdout  # Locust's help, not a separate one
    for dest in ECHO_OPTIONS:
        flag = "--" + dest.replace("_", "-")
        assert re.search(rf"^  {flag} \S+\n\s+TCP echo", result.stdout, re.MULTILINE), flag


def test_the_options_are_in_the_web_ui(tmp_path: Path) -> None:
    web = locust(
        "--web-host", "127.0.0.1", "--web-port", "0", "--host", "tcp://127.0.0.1:7", "--echo-small-bytes", "100",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        lines = Lines(web)
        port = int(lines.wait_for(r"web UI listening on port (\d+)").group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            page = response.read().decode()
        finally:
            connection.close()
        assert response.status == 200
        found = re.search(r"window\.templateArgs = (\{.*\})\s*$", page, re.MULTILINE)
        assert found, page[:2000]
        extra = json.loads(found.group(1))["extra_options"]
        assert {dest: extra[dest]["default_value"] for dest in ECHO_OPTIONS} == {
            **ECHO_OPTIONS,
            "echo_small_bytes": 100,
        }
        assert all(extra[dest]["help_text"].startswith("TCP echo") for dest in ECHO_OPTIONS)
    finally:
        web.send_signal(signal.SIGTERM)
        web.communicate(timeout=60)
