"""deploy/grafana/echo-service.json: it is a well-formed dashboard, its queries parse as
PromQL (promtool reads them as recording rules), and every metric it uses is one a live
server exports on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the test extras

from tests.conftest import ServerFactory
from tests.helpers import ROOT
from tests.test_prometheus import (
    PROMETHEUS_MADE,
    exported_names,
    needs_promtool,
    promql_metric_names,
    promtool,
    recorded_rules,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "echo-service.json"
# Grafana's variables, replaced by values Prometheus accepts.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": "echo-service", "$instance": ".*"}
# What the dashboard must show: the figures of the /dashboard page, and the process.
REQUIRED = {
    "up",
    "echo_ready",
    "echo_build_info",
    "echo_connections_active",
    "echo_connections_accepted_total",
    "echo_received_bytes_total",
    "echo_sent_bytes_total",
    "echo_connections_closed_total",
    "echo_connections_rejected_total",
    "echo_connections_timed_out_total",
    "echo_log_events_dropped_total",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
}


def load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def expressions(document: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in document["panels"] for target in panel.get("targets", [])]


def variable_metrics(document: dict[str, Any]) -> set[str]:
    """The metric of each ``label_values(metric, label)`` variable query."""
    names = set()
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.match(r"label_values\((\w+)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(metric, label)"
            names.add(match.group(1))
    return names


def test_dashboard_is_well_formed() -> None:
    document = load()
    assert document["uid"] == "echo-service" and document["title"] and document["schemaVersion"] >= 36
    panels = document["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in document["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']} is off the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert 'job="$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target["expr"]


def test_every_metric_the_dashboard_uses_is_exported(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    exported = exported_names(server)
    document = load()
    used = variable_metrics(document)
    for expr in expressions(document):
        used |= promql_metric_names(expr)
    missing = used - exported - set(recorded_rules()) - PROMETHEUS_MADE
    assert not missing, f"the dashboard uses metrics the server does not export: {sorted(missing)}"
    assert used >= REQUIRED, f"the dashboard does not show {sorted(REQUIRED - used)}"


@needs_promtool
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = []
    for number, expr in enumerate(expressions(load())):
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query:{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = path.read_text().replace("sum by (reason)", "sum by reason", 1)
    path.write_text(broken)
    assert promtool("check", "rules", str(path)).returncode != 0, "promtool must reject a broken query"
