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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_dashboard
from tests.conftest import ServerFactory
from tests.faulty import FaultyServer
from tests.helpers import ROOT, ServerProcess

# Never import locust here: importing it monkey-patches this whole process with gevent.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")
LOCUSTFILE = str(ROOT / "loadtest" / "locustfile.py")
ECHO_OPTIONS = {  # dest -> (flag, default as loadtest/locust.conf sets it)
    "echo_small_bytes": ("--echo-small-bytes", 64),
    "echo_large_bytes": ("--echo-large-bytes", 16384),
    "echo_connect_timeout": ("--echo-connect-timeout", 5.0),
    "echo_read_timeout": ("--echo-read-timeout", 5.0),
    "echo_think_time": ("--echo-think-time", 0.05),
    "echo_response_time_limit": ("--echo-max-p95-ms", 500.0),
    "echo_banner": ("--echo-banner", False),
    "echo_expect_banner": ("--echo-expect-banner", ""),
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
    assert len(verdicts) == 1 and re.fullmatch(r"PASS: \d+ echoes, 0 failures, p95 \d+ ms <= 500 ms", verdicts[0])
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
    assert len(verdicts) == 1 and re.fullmatch(r"FAIL: \d+ of \d+ echoes failed \([\d.]+%\)", verdicts[0])


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
    for flag, default in ECHO_OPTIONS.values():
        value = "" if isinstance(default, bool) else r" \S+"
        assert re.search(rf"^  {flag}{value}\s+TCP echo", result.stdout, re.MULTILINE), flag


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
            **{dest: default for dest, (_, default) in ECHO_OPTIONS.items()},
            "echo_small_bytes": 100,
        }
        assert all(extra[dest]["help_text"].startswith("TCP echo") for dest in ECHO_OPTIONS)
    finally:
        web.send_signal(signal.SIGTERM)
        web.communicate(timeout=60)


@pytest.fixture(scope="module")
def banner_server() -> Iterator[ServerProcess]:
    """A real server process that sends '{hostname} {peer}' first on every connection."""
    process = ServerProcess(
        "--port", "0", "--admin-port", "off", "--stats-interval", "0", "--banner", r"{hostname} {peer}\n"
    )
    try:
        yield process.start()
    finally:
        process.stop()


def short_run(server: ServerProcess, tmp_path: Path, name: str, *options: str) -> tuple[int, str, dict[str, Any]]:
    """A 3 s headless run of 5 users: (exit code, output, CSV rows)."""
    host, port = server.address
    run = locust(
        *("--headless", "-u", "5", "-r", "5", "-t", "3s", "--host", f"{host}:{port}", "--only-summary"),
        *("--csv", str(tmp_path / name), *options),
        cwd=tmp_path,
    )
    output, _ = run.communicate(timeout=90)
    return run.returncode, output, rows(tmp_path / name)


def test_a_banner_server_passes_with_the_option_and_names_it_without(
    banner_server: ServerProcess, tmp_path: Path
) -> None:
    code, output, stats = short_run(
        banner_server, tmp_path, "banner", "--echo-expect-banner", r"^\S+ 127\.0\.0\.1:\d+$"
    )
    assert code == 0, output
    assert re.search(r"^PASS: \d+ echoes, 0 failures", output, re.MULTILINE), output
    assert int(stats["Aggregated"]["Failure Count"]) == 0 and int(stats["echo 64B"]["Request Count"]) > 0

    code, output, stats = short_run(banner_server, tmp_path, "plain")
    assert code == 1, output
    # Every echo fails; each reconnect succeeds, and the verdict does not count those.
    verdict = re.search(r"^FAIL: (\d+) of (\d+) echoes failed \(100\.00%\)$", output, re.MULTILINE)
    assert verdict and verdict.group(1) == verdict.group(2), output
    assert int(stats["connect"]["Request Count"]) > 0 and int(stats["connect"]["Failure Count"]) == 0
    assert "pass --echo-banner to skip it" in output
    with open(tmp_path / "plain_failures.csv", newline="") as failures:
        errors = {row["Error"] for row in csv.DictReader(failures)}
    assert len(errors) == 1 and "--echo-banner" in errors.pop()  # one message, not one per connection


def test_a_banner_that_does_not_match_fails_the_connects(banner_server: ServerProcess, tmp_path: Path) -> None:
    code, output, stats = short_run(banner_server, tmp_path, "mismatch", "--echo-expect-banner", "^replica-")
    assert code == 1, output
    assert re.search(r"^FAIL: no echoes were made \(\d+ connects failed\)$", output, re.MULTILINE), output
    assert "the banner line does not match --echo-expect-banner" in output
    assert int(stats["connect"]["Failure Count"]) > 0


def test_a_bad_banner_pattern_is_one_line(tmp_path: Path) -> None:
    run = locust(
        "--headless", "-u", "1", "-t", "1s", "--host", "127.0.0.1:7", "--echo-expect-banner", "(", cwd=tmp_path
    )
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 2 and "Traceback" not in output
    assert [line for line in output.splitlines() if "locustfile:" in line] == [
        "locustfile: --echo-expect-banner: not a regular expression: missing ), unterminated subpattern at position 0"
    ]


# The web UI labels a custom option by its dest; resolves with the labels once the form has them.
LABELS_JS = """new Promise((resolve, reject) => {
  const labels = () => [...document.querySelectorAll("label")].map((label) => label.textContent);
  const check = () => {
    if (labels().some((text) => text.includes("(TCP echo"))) { observer.disconnect(); resolve(labels()); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document.body, {childList: true, subtree: true});
  setTimeout(() => { observer.disconnect(); reject(new Error("no TCP echo labels: " + labels())); }, 20000);
  check();
})"""


browser = test_dashboard.browser  # the headless Chromium fixture (skips without chromium)


def test_the_web_form_labels_read_as_words(browser: test_dashboard.Browser, tmp_path: Path) -> None:
    web = locust("--web-host", "127.0.0.1", "--web-port", "0", "--host", "tcp://127.0.0.1:7", cwd=tmp_path)
    try:
        port = int(Lines(web).wait_for(r"web UI listening on port (\d+)").group(1))
        session = browser.open(f"http://127.0.0.1:{port}/")
        answer = browser.call(
            "Runtime.evaluate", {"expression": LABELS_JS, "awaitPromise": True, "returnByValue": True}, session=session
        )
    finally:
        web.send_signal(signal.SIGTERM)
        web.communicate(timeout=60)
    ours = [text.split(" (TCP echo", 1)[0] for text in answer["result"]["value"] if "(TCP echo" in text]
    assert sorted(ours) == [
        "Echo Banner",
        "Echo Connect Timeout",
        "Echo Expect Banner",
        "Echo Large Bytes",
        "Echo Read Timeout",
        "Echo Response Time Limit",
        "Echo Small Bytes",
        "Echo Think Time",
    ]  # once "Echo Max P9 5Ms"
