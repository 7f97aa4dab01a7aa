"""The container image, built with ``make image`` and run with a real engine through the
``docker`` CLI.

The base image comes from PYTHON_BASE_IMAGE when set (no registry is reachable on these
machines); without it the Dockerfile's default base must already be present locally, as
nothing here pulls. Skipped with a one-line reason when no engine answers or the base
is missing; REQUIRE_CONTAINER_TESTS=1 (set by .ci/run after it brings the engine up)
turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import ROOT, JsonLines, read_exactly, read_until_eof

pytestmark = pytest.mark.container
UID = "10001"


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or [f"docker info exited {info.returncode}"])[-1]
        return f"no container engine answers: {last}"
    return None


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr}")
    return result


def default_base_image() -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match is not None, "the Dockerfile has no ARG PYTHON_IMAGE default"
    return match.group(1)


def _skip_or_fail(problem: str) -> None:
    if os.environ.get("REQUIRE_CONTAINER_TESTS") == "1":
        pytest.fail(f"REQUIRE_CONTAINER_TESTS=1 but {problem}")
    pytest.skip(problem)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    make_output: str  # what `make image` printed


@pytest.fixture(scope="module")
def built() -> Iterator[BuiltImage]:
    problem = _engine_problem()
    if problem:
        _skip_or_fail(problem)
    base = os.environ.get("PYTHON_BASE_IMAGE", "")
    if not base:
        default = default_base_image()
        if docker("image", "inspect", default, check=False).returncode != 0:
            _skip_or_fail(f"base image {default} is not available locally and PYTHON_BASE_IMAGE is not set")
    tag = f"echo-service:test-{uuid.uuid4().hex[:8]}"
    # The README's way: `make image`, with PYTHON_IMAGE for a local base.
    command = ["make", "--no-print-directory", "image", f"IMAGE={tag}", f"PYTHON={sys.executable}"]
    if base:
        command.append(f"PYTHON_IMAGE={base}")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"make image failed: {result.stderr}"
    yield BuiltImage(tag, result.stdout)
    docker("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def image(built: BuiltImage) -> str:
    return built.tag


class Container:
    def __init__(
        self, image: str, *args: str, env: dict[str, str] | None = None, docker_args: tuple[str, ...] = ()
    ) -> None:
        self.name = f"echo-test-{uuid.uuid4().hex[:8]}"
        env_flags = [flag for key, value in (env or {}).items() for flag in ("-e", f"{key}={value}")]
        docker(
            "run",
            "-d",
            "--name",
            self.name,
            "--stop-timeout",
            "10",
            "-p",
            "127.0.0.1::7007",
            "-p",
            "127.0.0.1::7008",
            *env_flags,
            *docker_args,
            image,
            *args,
        )
        self._logs = subprocess.Popen(
            ["docker", "logs", "-f", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self._logs.stdout is not None
        self.log = JsonLines(self._logs.stdout)

    def port(self, container_port: int) -> tuple[str, int]:
        mapping = docker("port", self.name, str(container_port)).stdout.split()[0]
        host, _, port = mapping.rpartition(":")
        return host, int(port)

    def wait_ready(self) -> dict[str, Any]:
        return self.log.wait_for("ready", timeout=30)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)
        self._logs.wait(10)
        if self._logs.stdout:
            self._logs.stdout.close()


@pytest.fixture
def run_container(image: str) -> Iterator[Any]:
    containers: list[Container] = []

    def start(*args: str, env: dict[str, str] | None = None, docker_args: tuple[str, ...] = ()) -> Container:
        env = {"ECHO_LOG_FORMAT": "json", **(env or {})}
        container = Container(image, *args, env=env, docker_args=docker_args)
        containers.append(container)
        container.wait_ready()
        return container

    yield start
    for container in containers:
        container.remove()


def test_netcat_round_trip_and_metrics_through_published_ports(run_container: Any) -> None:
    container = run_container()
    host, port = container.port(7007)
    text = b"hello through the container\n"
    result = subprocess.run(["nc", "-N", host, str(port)], input=text, capture_output=True, timeout=20, check=False)
    assert result.stdout == text
    admin_host, admin_port = container.port(7008)
    body = urllib.request.urlopen(f"http://{admin_host}:{admin_port}/metrics", timeout=10).read().decode()
    assert "echo_connections_accepted_total 1" in body
    assert f"echo_received_bytes_total {len(text)}" in body


def test_runs_as_a_non_root_uid_on_a_read_only_root_and_is_healthy(run_container: Any) -> None:
    container = run_container(docker_args=("--read-only", "--cap-drop", "ALL"))  # as deploy/ runs it
    assert docker("exec", container.name, "id", "-u").stdout.strip() == UID
    # PID 1 is the server itself (exec-form ENTRYPOINT): its real and effective UIDs.
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {UID}, status
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout
    assert cmdline.split("\0")[:3] == ["python", "-m", "server"]
    assert health_verdict(container) == 0


def health_verdict(container: Container) -> int:
    """Run the image's HEALTHCHECK now: 0 healthy. Podman runs it on demand; with another
    engine, run the same command the HEALTHCHECK runs."""
    if shutil.which("podman"):
        return subprocess.run(
            ["podman", "healthcheck", "run", container.name], capture_output=True, timeout=30, check=False
        ).returncode
    return docker("exec", container.name, "python", "-m", "server", "healthcheck", check=False).returncode


def test_health_check_follows_an_admin_port_given_as_a_flag(run_container: Any) -> None:
    container = run_container("--admin-port", "9000")
    assert health_verdict(container) == 0
    docker("kill", "--signal", "STOP", container.name)  # a hung server must turn unhealthy
    try:
        assert health_verdict(container) != 0
    finally:
        docker("kill", "--signal", "CONT", container.name)


def test_health_check_probes_the_echo_port_when_the_admin_endpoint_is_off(run_container: Any) -> None:
    container = run_container("--admin-port", "off", "--port", "7010")
    assert health_verdict(container) == 0
    probe = container.log.wait_for("closed")  # the probe was one real, short echo
    assert probe["bytes_in"] == probe["bytes_out"] == 1 and probe["reason"] == "eof"


def test_make_image_prints_the_size_of_our_own_layers(built: BuiltImage) -> None:
    match = re.search(r"echo-service layers (\d+\.\d+) MB on top of (\S+)", built.make_output)
    assert match is not None, built.make_output
    assert 0.0 < float(match.group(1)) < 5.0
    assert match.group(2) == (os.environ.get("PYTHON_BASE_IMAGE") or default_base_image())


def test_configuration_by_env_and_by_flags_after_the_image(run_container: Any) -> None:
    container = run_container("--max-connections", "1", env={"ECHO_IDLE_TIMEOUT": "0.5"})
    started = container.log.wait_for("started")
    assert started["max_connections"] == 1
    host, port = container.port(7007)
    with socket.create_connection((host, port), timeout=10) as first:
        first.sendall(b"one")
        assert read_exactly(first, 3) == b"one"
        assert read_until_eof(first) == b""  # closed by the 0.5 s idle timeout from the env
    closed = container.log.wait_for("closed")
    assert closed["reason"] == "idle_timeout"


def test_help_exits_0(image: str) -> None:
    result = docker("run", "--rm", image, "--help")
    assert result.returncode == 0 and "ECHO_MAX_CONNECTIONS" in result.stdout


def test_docker_stop_is_graceful_fast_and_loses_no_byte(run_container: Any) -> None:
    container = run_container()
    host, port = container.port(7007)
    with socket.create_connection((host, port), timeout=20) as client:
        before = os.urandom(64 * 1024)
        client.sendall(before)
        assert read_exactly(client, len(before)) == before
        stop_result: dict[str, Any] = {}

        def stop() -> None:
            started = time.monotonic()
            stop_result["proc"] = docker("stop", container.name, timeout=30)
            stop_result["seconds"] = time.monotonic() - started

        stopper = threading.Thread(target=stop)
        stopper.start()
        container.log.wait_for("stopping")
        during = os.urandom(64 * 1024)  # sent while the server drains
        client.sendall(during)
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(client) == during
        stopper.join(30)
    assert stop_result["seconds"] < 3.0, f"docker stop took {stop_result['seconds']:.2f} s"
    assert docker("inspect", container.name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    records = container.log.finish(10)
    assert records[-1]["event"] == "stopped", records[-3:]
    assert records[-1]["bytes_received"] == records[-1]["bytes_sent"] == 2 * 64 * 1024
