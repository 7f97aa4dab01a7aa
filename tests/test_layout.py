"""server/ is grouped by thread rules, and the imports keep to them (docs/design.md):
the engine takes from observe only Stats, the Event records and Throttle; nothing in
engine or observe imports the layers above them (core, cli, workers). The tools are
one-shot commands beside the CLI and may read its parser (the health check does)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

ENGINE_MAY_USE = {"server.observe.stats", "server.observe.events", "server.observe.throttle"}
ABOVE = ("server.core", "server.cli", "server.workers", "server.failure", "server.signals")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("server")}


def test_the_engine_uses_only_stats_events_and_throttle_from_observe() -> None:
    for path in sorted((ROOT / "server" / "engine").glob("*.py")):
        observed = {name for name in _imports(path) if name.startswith("server.observe.")}
        modules = {".".join(name.split(".")[:3]) for name in observed}
        assert modules <= ENGINE_MAY_USE, f"{path.name} imports {sorted(modules - ENGINE_MAY_USE)}"


def test_nothing_below_core_imports_upward() -> None:
    for package in ("engine", "observe"):
        for path in sorted((ROOT / "server" / package).glob("*.py")):
            upward = {name for name in _imports(path) if name.startswith(ABOVE)}
            assert not upward, f"server/{package}/{path.name} imports {sorted(upward)}"
