"""deploy/prometheus/rules.yml, checked by the real tools: promtool, and a Prometheus server.

- ``promtool check rules`` and ``promtool test rules`` (the unit tests in tests.yml), and
  a broken threshold that those unit tests must catch.
- Every metric the rules use is one a live server exports on /metrics.
- End to end: a real Prometheus scrapes a running echo-service every second; after a
  known number of connections and bytes, its HTTP API shows those exact totals, a
  non-zero rate, and the recording rules evaluated without error.

The test waits for scrapes, not for time: a logging handler on ``echo.admin`` (its
handlers log each request at DEBUG) counts the ``GET /metrics`` requests. Prometheus
scrapes one target at a time, so once scrape k+1 has begun, scrape k is stored.
Without Debian's ``prometheus`` package these tests skip, saying so.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the test extras

from client import EchoClient
from server.core import EchoServer
from tests.conftest import ServerFactory
from tests.helpers import ROOT, ServerProcess, address_of

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "tests.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# Made by Prometheus itself, not by the server.
PROMETHEUS_MADE = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"})
PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool: apt-get install -y prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus: apt-get install -y prometheus")


# --- shared with test_grafana --------------------------------------------------------------


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, grouping lists, functions,
    durations, strings and Grafana $variables are not metric names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def recorded_rules() -> dict[str, str]:
    """record name -> expression, from rules.yml."""
    document = yaml.safe_load(RULES.read_text())
    return {rule["record"]: rule["expr"] for group in document["groups"] for rule in group["rules"] if "record" in rule}


def scraped_names(host: str, port: int) -> set[str]:
    """Every series name on the /metrics of the admin endpoint at host:port."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def exported_names(server: EchoServer) -> set[str]:
    """Every series name a live server exports: ``server``'s (one process), and those of a
    ``--workers 2`` supervisor started for the purpose (it adds the per-worker series)."""
    assert server.admin is not None
    host, port = server.admin.address[:2]
    names = scraped_names(str(host), int(port))
    supervisor = ServerProcess("--workers", "2", "--port", "0", "--admin-port", "0")
    try:
        supervisor.start()
        names |= scraped_names(*address_of(supervisor.wait_for("listening"), "admin_address"))
        supervisor.signal()
        assert supervisor.finish() == 0
    finally:
        supervisor.stop()
    return names


# --- promtool ---------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@needs_promtool
def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    rules = RULES.read_text()
    assert '/ process_max_fds{job="echo-service"} > 0.9' in rules
    (tmp_path / "rules.yml").write_text(
        rules.replace('process_max_fds{job="echo-service"} > 0.9', 'process_max_fds{job="echo-service"} > 0.96')
    )
    shutil.copy(UNIT_TESTS, tmp_path / "tests.yml")
    tested = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert tested.returncode != 0 and "EchoFileDescriptorsNearLimit" in tested.stdout + tested.stderr


def test_every_metric_the_rules_use_is_exported(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    exported = exported_names(server)
    document = yaml.safe_load(RULES.read_text())
    used = {
        name for group in document["groups"] for rule in group["rules"] for name in promql_metric_names(rule["expr"])
    }
    assert used, "no metric found in the rules: the parser is broken"
    missing = used - exported - set(recorded_rules()) - PROMETHEUS_MADE
    assert not missing, f"rules.yml uses metrics the server does not export: {sorted(missing)}"
    assert {"process_open_fds", "process_max_fds", "echo_worker_restarts_total"} <= exported


def test_the_metric_name_parser() -> None:
    expr = 'sum by (job, reason) (rate(echo_x_total{reason="a b", job=~"$job"}[5m])) / on (job) echo:y:rate1m > 0.5'
    assert promql_metric_names(expr) == {"echo_x_total", "echo:y:rate1m"}
    assert promql_metric_names("label_values(echo_build_info, instance)") == {"echo_build_info", "instance"}


# --- a real Prometheus -------------------------------------------------------------------


class ScrapeCounter(logging.Handler):
    """Counts the admin endpoint's GET /metrics requests (any admin handler thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if '"GET /metrics ' in record.getMessage():
            with self._cond:
                self.count += 1
                self._cond.notify_all()

    def wait(self, scrapes: int, timeout: float = 10.0) -> None:
        """Until ``scrapes`` more scrapes have begun."""
        with self._cond:
            target = self.count + scrapes
            assert self._cond.wait_for(lambda: self.count >= target, timeout), f"no scrape within {timeout} s"


@pytest.fixture
def scrapes() -> Iterator[ScrapeCounter]:
    counter = ScrapeCounter()
    logger = logging.getLogger("echo.admin")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    yield counter
    logger.removeHandler(counter)
    logger.setLevel(level)


class Prometheus:
    """A Prometheus server on loopback with its data in a temporary directory."""

    def __init__(self, workdir: Path, target: str) -> None:
        self._workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "echo-service", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = ""

    def start(self, attempts: int = 3) -> None:
        # Prometheus cannot listen on port 0 and say which port it got. So: bind port 0,
        # read the port, close the socket, pass the port. Another process may take it in
        # between (a race): then Prometheus exits with "address already in use" and we
        # try again with a new port.
        for _ in range(attempts):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            if self._launch():
                return
            if "address already in use" not in self.log:
                break
        raise AssertionError(f"prometheus did not start:\n{self.log[-3000:]}")

    def _launch(self) -> bool:
        """Start it and wait for its ready line; False if it exited first."""
        assert PROMETHEUS is not None
        storage = self._workdir / f"data-{self.port}"
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self._workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        stderr = self.process.stderr.fileno()
        deadline = time.monotonic() + 20
        while "Server is ready to receive web requests" not in self.log:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stderr], [], [], left)[0]:
                raise AssertionError(f"prometheus not ready within 20 s:\n{self.log[-3000:]}")
            chunk = os.read(stderr, 65536)
            if not chunk:
                self.process.wait(5)
                self.process.stderr.close()
                return False
            self.log += chunk.decode(errors="replace")
        return True

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            document = json.load(answer)
        assert document["status"] == "success", document
        return document["data"]

    def value(self, query: str) -> float | None:
        """The one sample of an instant query, or None if it has none."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        assert self.process.stderr is not None
        self.process.stderr.close()


@needs_prometheus
def test_a_real_prometheus_scrapes_exact_totals_and_evaluates_the_rules(
    make_server: ServerFactory, scrapes: ScrapeCounter, tmp_path: Path
) -> None:
    server, recorder = make_server(admin_port=0)
    assert server.admin is not None
    admin_host, admin_port = server.admin.address[:2]
    prometheus = Prometheus(tmp_path, f"{admin_host}:{admin_port}")
    try:
        prometheus.start()
        scrapes.wait(2)  # the first scrape is stored: a zero to take rates from
        assert prometheus.value('up{job="echo-service"}') == 1
        assert prometheus.value("echo_connections_accepted_total") == 0

        sizes = [1, 100, 1000, 10_000, 65_536, 100_000, 7]
        host, port = server.server_address[:2]
        for size in sizes:
            with EchoClient(str(host), int(port)) as client:
                payload = os.urandom(size)
                assert client.echo(payload) == payload
        recorder.wait_for(lambda e: len(recorder.named("closed")) == len(sizes))

        expected = {
            "echo_connections_accepted_total": len(sizes),
            "echo_received_bytes_total": sum(sizes),
            "echo_sent_bytes_total": sum(sizes),
            'echo_connections_closed_total{reason="eof"}': len(sizes),
            'echo_listener_received_bytes_total{listener="tcp"}': sum(sizes),
            "echo_connections_active": 0,
        }
        seen: dict[str, float | None] = {}
        for _ in range(15):
            scrapes.wait(1)
            seen = {query: prometheus.value(f"sum({query})") for query in expected}  # sum: whatever labels come
            if seen == expected:
                break
        assert seen == expected, f"Prometheus shows {seen}"
        rate = prometheus.value("sum(rate(echo_connections_accepted_total[1m]))")
        assert rate is not None and rate > 0

        recorded: dict[str, float | None] = {}
        for _ in range(15):  # rules run every second, on their own timer: wait a scrape at a time
            recorded = {name: prometheus.value(f"sum({name})") for name in recorded_rules()}
            if all(recorded[n] for n in ("echo:connections_accepted:rate1m", "echo:received_bytes:rate1m")):
                break
            scrapes.wait(1)
        assert recorded["echo:connections_accepted:rate1m"] and recorded["echo:connections_accepted:rate1m"] > 0
        assert recorded["echo:sent_bytes:rate1m"] and recorded["echo:sent_bytes:rate1m"] > 0
        assert recorded["echo:connections_rejected:ratio_rate5m"] == 0  # traffic, no rejections: 0, not NaN
        assert recorded["echo:connections_timed_out:ratio_rate5m"] == 0
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
        assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"] == []
    finally:
        prometheus.stop()
