"""--workers in the container image: ECHO_WORKERS=auto on a read-only root without
capabilities (as deploy/ runs it), and `docker stop` drains every worker.

Uses test_container.py's image and engine fixtures (and so its skip rules).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from typing import Any

import pytest

from tests.test_container import built, docker, image, run_container  # noqa: F401 (fixtures)

pytestmark = pytest.mark.container


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="auto is 1 worker on one CPU: no supervisor")
def test_echo_workers_auto_serves_and_stops_gracefully_in_the_image(run_container: Any) -> None:  # noqa: F811
    container = run_container(env={"ECHO_WORKERS": "auto"}, docker_args=("--read-only", "--cap-drop", "ALL"))
    started = container.log.wait_for("started")
    assert started["workers"] >= 2
    host, port = container.port(7007)
    for n in range(20):
        text = f"through worker processes {n}\n".encode()
        result = subprocess.run(["nc", "-N", host, str(port)], input=text, capture_output=True, timeout=20, check=False)
        assert result.stdout == text
    admin_host, admin_port = container.port(7008)
    stats = json.loads(urllib.request.urlopen(f"http://{admin_host}:{admin_port}/stats", timeout=10).read())
    assert len(stats["workers"]) == started["workers"]
    docker("stop", container.name, timeout=30)
    assert docker("inspect", container.name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    stopped = container.log.wait_for("stopped", timeout=10)
    assert stopped["accepted"] == 20
