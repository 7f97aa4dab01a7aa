"""deploy/kubernetes.yaml agrees with the image and the server it deploys."""

from __future__ import annotations

import re
from typing import Any

import pytest

from server.config import SETTINGS, Config, env_name
from server.core import FINAL_FLUSH_S
from tests.helpers import ROOT

yaml = pytest.importorskip("yaml")


def _manifests() -> dict[str, Any]:
    with open(ROOT / "deploy" / "kubernetes.yaml") as source:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(source)}


def test_the_pod_runs_as_the_images_user_with_real_settings() -> None:
    pod = _manifests()["Deployment"]["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == user.groups()
    container = pod["containers"][0]
    known = {env_name(spec.name) for spec in SETTINGS}
    assert {item["name"] for item in container["env"]} <= known


def test_ports_probes_and_grace_period_match_the_server() -> None:
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"echo": Config().port, "admin": Config().admin_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["terminationGracePeriodSeconds"] > Config().shutdown_timeout + FINAL_FLUSH_S
    service_ports = {port["name"]: port["port"] for port in manifests["Service"]["spec"]["ports"]}
    assert service_ports == ports
