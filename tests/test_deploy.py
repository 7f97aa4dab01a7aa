"""What deployments rely on: deploy/kubernetes.yaml agrees with the image and the server
it deploys, and the container's health check finds the ports the server was given."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from server import healthcheck
from server.config import SETTINGS, Config, env_name
from server.core import FINAL_FLUSH_S
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
