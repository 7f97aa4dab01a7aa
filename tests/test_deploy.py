"""What deployments rely on: deploy/kubernetes.yaml agrees with the image and the server
it deploys, and the container's health check finds the ports the server was given.

The manifests also pass kubernetes-validate --strict and checkov (offline), meet the Pod
Security "restricted" profile, and deploy/compose.yaml runs three PROXY-protocol replicas
behind HAProxy with flags the server accepts (its behaviour: tests/test_balancers.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from server.arguments import load_config
from server.config import SETTINGS, Config, env_name
from server.core import FINAL_FLUSH_S
from server.tools import healthcheck
from tests.conftest import ServerFactory
from tests.helpers import ROOT


def _manifests() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
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


# --- the health check follows the server's flags ----------------------------------------


def _cmdline(*argv: str) -> bytes:
    return b"".join(arg.encode() + b"\0" for arg in argv)


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (_cmdline("python", "-m", "server", "--admin-port", "9000"), ["--admin-port", "9000"]),
        (_cmdline("python", "-m", "server"), []),
        (_cmdline("/usr/bin/python3", "-X", "dev", "-m", "server", "--port=1"), ["--port=1"]),
        (_cmdline("/venv/bin/echo-server", "--admin-port", "off"), ["--admin-port", "off"]),
        (_cmdline("python", "-m", "server", "healthcheck"), None),
        (_cmdline("/sbin/init", "splash"), None),
        (_cmdline("python", "-m", "http.server"), None),
        (b"", None),
    ],
)
def test_only_an_echo_server_command_line_is_read(cmdline: bytes, expected: list[str] | None) -> None:
    assert healthcheck.server_arguments(cmdline) == expected


def _probe(own: dict[str, str | None], server_args: list[str] | None, env: dict[str, str]) -> healthcheck.Probe:
    return healthcheck.resolve(own, server_args, env)


def test_the_probe_follows_flag_then_server_command_line_then_environment_then_default() -> None:
    container_env = {"ECHO_HOST": "0.0.0.0"}
    assert _probe({}, [], container_env) == healthcheck.Probe("http", "127.0.0.1", 7008)
    assert _probe({}, ["--admin-port", "9000"], container_env) == healthcheck.Probe("http", "127.0.0.1", 9000)
    assert _probe({}, ["--admin-port=9001"], {"ECHO_ADMIN_PORT": "9002"}).port == 9001
    assert _probe({}, None, {"ECHO_ADMIN_PORT": "9002"}).port == 9002
    assert _probe({"admin_port": "9003"}, ["--admin-port", "9000"], {"ECHO_ADMIN_PORT": "9002"}).port == 9003
    # The admin endpoint binds the echo host unless --admin-host says otherwise.
    assert _probe({}, ["--host", "10.1.2.3"], {}).host == "10.1.2.3"
    assert _probe({}, ["--host", "::", "--admin-host", "127.0.0.2"], {}).host == "127.0.0.2"
    assert _probe({}, ["--host", "::"], {}).host == "::1"


def test_with_the_admin_endpoint_off_the_echo_port_is_probed() -> None:
    container_env = {"ECHO_HOST": "0.0.0.0"}
    assert _probe({}, ["--admin-port", "off"], container_env) == healthcheck.Probe("echo", "127.0.0.1", 7007)
    assert _probe({}, ["--admin-port", "-1", "--port", "7100"], {}) == healthcheck.Probe("echo", "127.0.0.1", 7100)
    assert _probe({}, [], {"ECHO_ADMIN_PORT": "off", "ECHO_PORT": "7200"}).port == 7200
    with pytest.raises(healthcheck.ProbeError, match="echo port is 0") as error:
        _probe({}, ["--admin-port", "off", "--port", "0"], {})
    assert error.value.exit_code == 1


def test_a_bad_value_names_its_source_and_a_bad_server_command_line_is_ignored() -> None:
    with pytest.raises(healthcheck.ProbeError, match=r"^ECHO_ADMIN_PORT: expected a whole number") as error:
        _probe({}, [], {"ECHO_ADMIN_PORT": "seven"})
    assert error.value.exit_code == 2
    # Flags the server itself would have refused cannot be what it runs with: fall back.
    assert _probe({}, ["--no-such-flag", "--admin-port", "9000"], {}).port == 7008


def test_healthcheck_probes_a_real_server_by_its_command_line(make_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = make_server(admin_port=None)
    port = str(server.server_address[1])
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(_cmdline("python", "-m", "server", "--admin-port", "off", "--port", port))
    assert healthcheck.main([], {}, cmdline) == 0
    assert server.stats.snapshot().accepted == 1  # the echo probe is a real connection
    server.shutdown()
    assert healthcheck.main([], {}, cmdline) == 1


def test_healthcheck_asks_the_admin_port_from_the_command_line(make_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = make_server(admin_port=0)
    assert server.admin is not None
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(_cmdline("python", "-m", "server", f"--admin-port={server.admin.address[1]}"))
    assert healthcheck.main([], {}, cmdline) == 0
    cmdline.write_bytes(_cmdline("python", "-m", "server", "--admin-port", "off", "--port", "1"))
    assert healthcheck.main([], {}, cmdline) == 1  # nothing echoes on port 1


# --- hardening, validated by the real validators ------------------------------------------


def _tool(name: str, install: str) -> str:
    """The validator's path, from this virtualenv or PATH; skip (saying how to install) if absent."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def test_the_manifests_pass_kubernetes_validate_strict() -> None:
    validate = _tool("kubernetes-validate", "pip install kubernetes-validate; it ships its schemas, no network")
    result = subprocess.run(
        [validate, "--strict", "--quiet", str(ROOT / "deploy" / "kubernetes.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_and_every_skip_says_why() -> None:
    checkov = _tool("checkov", "pip install checkov; see the README's Kubernetes section")
    result = subprocess.run(
        [
            checkov,
            "-f",
            "deploy/kubernetes.yaml",
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and result.returncode == 0, failed
    assert summary["passed"] > 50  # it really checked
    for doc in _manifests().values():
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason.split()) >= 3, value


def test_the_pod_meets_the_restricted_profile_and_the_image_is_a_placeholder() -> None:
    manifests = _manifests()
    assert manifests["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ".invalid/" in container["image"] and "@sha256:" in container["image"]
    assert ":latest" not in container["image"]
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget["selector"] == manifests["Deployment"]["spec"]["selector"]
    assert budget["maxUnavailable"] < manifests["Deployment"]["spec"]["replicas"]


def test_the_commented_proxy_example_names_real_settings() -> None:
    text = (ROOT / "deploy" / "kubernetes.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "aws-load-balancer-proxy-protocol" in comments
    named = set(re.findall(r"name: (ECHO_\w+)", comments))
    assert {"ECHO_PROXY_PROTOCOL", "ECHO_PROXY_PROTOCOL_FROM"} <= named
    assert named <= {env_name(spec.name) for spec in SETTINGS}
    for value in re.findall(r"name: ECHO_\w+, value: \"?([^\"}]+)", comments):
        assert value.strip()


# --- compose: three replicas behind HAProxy -------------------------------------------------


def test_compose_runs_three_proxied_replicas_behind_haproxy_with_real_flags() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    haproxy = services.pop("haproxy")
    assert sorted(services) == ["echo-1", "echo-2", "echo-3"]
    balancer_ip = haproxy["networks"]["echo"]["ipv4_address"]
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    config_text = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for name, service in services.items():
        assert f"server {name} {name}:{Config().port}" in config_text
        config = load_config(service["command"], {})
        assert config.proxy_protocol in ("v2", "any")
        assert config.proxy_protocol_from == f"{balancer_ip}/32"
        assert not service.get("ports"), "only HAProxy's port is published"
    assert f"check port {Config().admin_port}" in config_text


def test_compose_file_is_valid_for_a_compose_implementation() -> None:
    compose = _tool("podman-compose", "pip install podman-compose; it needs podman on PATH")
    if shutil.which("podman") is None:
        pytest.skip("podman-compose needs podman, which is not installed")
    result = subprocess.run(
        [compose, "-f", "compose.yaml", "config"],
        cwd=ROOT / "deploy",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = pytest.importorskip("yaml").safe_load(result.stdout)["services"]
    assert sorted(resolved) == ["echo-1", "echo-2", "echo-3", "haproxy"]
    assert all("--proxy-protocol=v2" in resolved[f"echo-{n}"]["command"] for n in (1, 2, 3))


def test_the_haproxy_config_is_valid() -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
