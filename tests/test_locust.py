"""The real Locust, headless, against a real server: smoke, failure, distributed."""

from __future__ import annotations

import csv
import importlib.util
import os
import queue
import re
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
