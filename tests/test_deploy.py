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
from tests.test_balancers import HAPROXY, Balancer, connect, ping, read_banner, start_replica


def _manifests(name: str = "kubernetes.yaml") -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    with open(ROOT / "deploy" / name) as source:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(source)}


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security's "restricted" profile (and "baseline" under it) would refuse in
    a pod spec: the checks of Kubernetes' pod-security-admission, for the fields used here."""
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(field)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
    allowed_volumes |= {"projected", "secret", "name"}
    for volume in pod.get("volumes", []):
        found += [f"volume type {kind}" for kind in volume if kind not in allowed_volumes]
    pod_context = pod.get("securityContext", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        found += [f"{name}: adds {cap}" for cap in capabilities.get("add", []) if cap != "NET_BIND_SERVICE"]
        found += [f"{name}: hostPort" for port in container.get("ports", []) if port.get("hostPort")]
    return found


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


MANIFESTS = ["kubernetes.yaml", "kubernetes-smoke.yaml", "kubernetes-rate-job.yaml"]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_the_manifests_pass_kubernetes_validate_strict(manifest: str) -> None:
    validate = _tool("kubernetes-validate", "pip install kubernetes-validate; it ships its schemas, no network")
    result = subprocess.run(
        [validate, "--strict", "--quiet", str(ROOT / "deploy" / manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_checkov_finds_nothing_and_every_skip_says_why(manifest: str) -> None:
    checkov = _tool("checkov", "pip install checkov in its own virtualenv, as .ci/run does")
    result = subprocess.run(
        [
            checkov,
            "-f",
            f"deploy/{manifest}",
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
    for doc in _manifests(manifest).values():
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason.split()) >= 3, value


def test_the_pod_meets_the_restricted_profile_and_the_image_is_a_placeholder() -> None:
    manifests = _manifests()
    assert manifests["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert _restricted_violations(pod) == []
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


def test_the_restricted_check_refuses_what_the_old_smoke_test_ran() -> None:
    """The header's old smoke test, kubectl run --image=busybox, gives a pod spec with no
    security context at all: the check must refuse it, as the Namespace would."""
    bare = {"containers": [{"name": "nc", "image": "busybox"}]}
    assert len(_restricted_violations(bare)) == 4


def test_the_smoke_pod_passes_restricted_and_its_command_checks_a_real_echo(make_server: ServerFactory) -> None:
    smoke = _manifests("kubernetes-smoke.yaml")["Pod"]
    deployment = _manifests()
    assert smoke["metadata"]["namespace"] == deployment["Namespace"]["metadata"]["name"]
    pod = smoke["spec"]
    assert _restricted_violations(pod) == []
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == deployment["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    # The command, aimed at the Service by name; run here against a live server instead.
    command = container["command"]
    service = deployment["Service"]["metadata"]["name"]
    assert command[:3] == ["python", "-m", "client"] and command[-2:] == [service, str(Config().port)]
    server, _ = make_server()
    host, port = server.server_address[:2]
    local = [sys.executable, *command[1:-2], str(host), str(port)]
    result = subprocess.run(local, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "hello", result
    assert server.stats.snapshot().accepted == 1
    server.shutdown()
    failed = subprocess.run(local, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 1, failed  # and the pod fails when nothing echoes
    header = (ROOT / "deploy" / "kubernetes.yaml").read_text().split("\napiVersion:", 1)[0]
    assert "busybox" not in header and "kubernetes-smoke.yaml" in header


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


def test_haproxy_logs_each_connection_with_client_server_timings_and_termination(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    replicas = []
    try:
        for _ in range(3):
            replicas.append(start_replica())
        balancer = Balancer(HAPROXY, replicas, tmp_path)
        try:
            with connect(balancer.port, "127.0.0.2") as sock:
                client = f"127.0.0.2:{sock.getsockname()[1]}"
                banner = read_banner(sock)
                assert banner is not None and ping(sock, b"logged")
            line = balancer.wait_for(re.escape(client) + " ", timeout=10)
        finally:
            balancer.stop()
    finally:
        for replica in replicas:
            replica.process.stop()
    fields = re.fullmatch(
        r"(?P<client>\S+) \[[^]]+\] echo replicas/(?P<server>echo-\d) (?P<address>\S+) "
        r"(?P<wait>-?\d+)/(?P<connect>-?\d+)/(?P<total>\d+) (?P<up>\d+)/(?P<down>\d+) (?P<state>\S\S) \S+ \S+\n",
        line,
    )
    assert fields is not None, line
    served_by = next(replica for replica in replicas if replica.local == banner[1])
    assert fields["client"] == client and fields["address"] == served_by.local
    assert int(fields["connect"]) >= 0 and int(fields["total"]) >= int(fields["connect"])
    # What the client sent up (plus the PROXY header) and what came down (banner + echo).
    assert int(fields["up"]) >= len(b"logged") and int(fields["down"]) >= len(b"logged") + len(banner[0])
    assert fields["state"] == "--", line


def test_compose_images_can_be_replaced_for_an_air_gapped_build() -> None:
    """PYTHON_IMAGE reaches the Dockerfile's build argument and HAPROXY_IMAGE names the
    balancer, both with the documented defaults (interpolated as podman-compose does)."""
    yaml = pytest.importorskip("yaml")
    podman_compose = pytest.importorskip("podman_compose")
    raw = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    dockerfile_default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert dockerfile_default is not None
    cases = [
        ({}, dockerfile_default.group(1), "haproxy:2.8"),
        ({"PYTHON_IMAGE": "localhost/py:1", "HAPROXY_IMAGE": "localhost/hap:2"}, "localhost/py:1", "localhost/hap:2"),
    ]
    for environment, base, balancer in cases:
        resolved = podman_compose.rec_subs(raw, environment)
        for name in ("echo-1", "echo-2", "echo-3"):
            assert resolved["services"][name]["build"]["args"] == {"PYTHON_IMAGE": base}
        assert resolved["services"]["haproxy"]["image"] == balancer
    readme = (ROOT / "README.md").read_text()
    assert "HAPROXY_IMAGE=" in readme and "PYTHON_IMAGE=" in readme


def test_the_client_jobs_run_real_commands_in_the_restricted_profile() -> None:
    """deploy/kubernetes-rate-job.yaml: rate and watch against the Service, as the image's user."""
    yaml = pytest.importorskip("yaml")
    from client import rate, watch

    with open(ROOT / "deploy" / "kubernetes-rate-job.yaml") as source:
        documents = list(yaml.safe_load_all(source))
    jobs = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "Job"}
    policies = [doc for doc in documents if doc["kind"] == "NetworkPolicy"]
    # The client pods may reach the echo pods (and DNS) only: checkov's CKV2_K8S_6.
    assert [policy["spec"]["podSelector"]["matchLabels"] for policy in policies] == [
        {"app.kubernetes.io/name": "echo-client"}
    ]
    manifests = _manifests()
    deployment_pod = manifests["Deployment"]["spec"]["template"]["spec"]
    service = manifests["Service"]["metadata"]["name"]
    assert set(jobs) == {"echo-rate", "echo-watch"}
    for name, module in (("echo-rate", rate), ("echo-watch", watch)):
        job = jobs[name]
        assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"] == deployment_pod["securityContext"]
        container = pod["containers"][0]
        assert container["image"] == deployment_pod["containers"][0]["image"]
        assert container["securityContext"] == deployment_pod["containers"][0]["securityContext"]
        assert container["command"] == ["python", "-m", "client"]
        command, host, port, *options = container["args"]
        assert command == module.COMMAND and host == service and int(port) == Config().port
        module.build_parser().parse_intermixed_args(options)  # a bad flag raises UsageError
