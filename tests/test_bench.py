"""Smoke test of the benchmark driver: one scenario, two servers, a short window."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from tests.helpers import ROOT


def test_bench_driver_writes_json_markdown_and_svg(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--repeats",
            "2",
            "--duration",
            "0.5",
            "--scenarios",
            "1",
            "--servers",
            "echo-service,asyncio-protocol",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    assert len(document["rows"]) == 4
    for row in document["rows"]:
        assert row["scenario"] == "50 conns, 1 KiB"
        assert row["errors"] == 0 and row["msgs_per_s"] > 1000
        assert row["cpu_us_per_msg"] > 0 and row["peak_rss_mib"] > 1
    summary = {entry["server"]: entry for entry in document["summary"]}
    assert set(summary) == {"echo-service", "asyncio-protocol"}
    rates = summary["echo-service"]["msgs_per_s"]
    assert rates["min"] <= rates["median"] <= rates["max"] and summary["echo-service"]["repeats"] == 2
    assert {t["target"].split(" (")[0] for t in document["targets"]} == {
        "CPU per message <= 0.8x asyncio Protocol",
        "throughput >= asyncio Protocol",
    }
    table = (tmp_path / "results.md").read_text()
    assert "| echo-service |" in table and "## Targets" in table
    chart = ElementTree.parse(tmp_path / "results.svg").getroot()
    assert chart.tag.endswith("svg") and len(chart.findall("{http://www.w3.org/2000/svg}rect")) >= 5
