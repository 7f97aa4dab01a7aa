"""server/ is grouped by thread rules, and the imports keep to them (docs/design.md):
the engine takes from observe only Stats, the Event records and Throttle; nothing in
engine or observe imports the layers above them (core, cli, workers, listeners, config);
lib/ imports nothing from server; and no import cycle runs between the packages and
top-level modules of server/ (config included). The tools are one-shot commands beside
the CLI and may read its parser (the health check does)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT

ENGINE_MAY_USE = {"server.observe.stats", "server.observe.events", "server.observe.throttle"}
ABOVE = (
    "server.core",
    "server.cli",
    "server.workers",
    "server.failure",
    "server.signals",
    "server.listeners",
    "server.config",
)
PACKAGES = ("engine", "observe", "workers", "tools", "lib")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("server")}


def _unit(module: str, root: Path) -> str | None:
    """The node a module belongs to: its package (server.engine), or itself at the top
    (server.config); None for the package root's ``__init__`` (only __version__)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in PACKAGES:
        return f"server.{parts[1]}"
    known = root / "server" / f"{parts[1]}.py"
    return f"server.{parts[1]}" if known.exists() else None


def _graph(root: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "server").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        unit = _unit(module, root)
        if unit is None:
            continue
        targets = {_unit(name, root) for name in _imports(path)}
        graph.setdefault(unit, set()).update(t for t in targets if t is not None and t != unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between units, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(unit: str) -> Iterator[list[str]]:
        state[unit] = 1
        path.append(unit)
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == 1:
                yield [*path[path.index(target) :], target]
            elif target not in state:
                yield from visit(target)
        path.pop()
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            for cycle in visit(unit):
                return cycle
    return None


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


def test_lib_imports_nothing_from_server() -> None:
    for path in sorted((ROOT / "server" / "lib").glob("*.py")):
        assert not _imports(path), f"server/lib/{path.name} imports {sorted(_imports(path))}"


def test_no_import_cycle_between_packages_and_top_level_modules() -> None:
    cycle = find_cycle(_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """The check can fail: config <-> engine, as it stood before lib/ (2fea34d)."""
    for name, text in {
        "server/__init__.py": "",
        "server/config.py": "from server.engine.banner import check_template\n",
        "server/engine/__init__.py": "",
        "server/engine/banner.py": "",
        "server/engine/listener.py": "from server.config import Config\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert find_cycle(_graph(tmp_path)) in (
        ["server.config", "server.engine", "server.config"],
        ["server.engine", "server.config", "server.engine"],
    )


def test_the_product_imports_nothing_but_the_standard_library() -> None:
    """uvloop and the other development tools are the bench's and CI's, never the product's."""
    allowed = set(sys.stdlib_module_names) | {"server", "client"}
    for path in sorted([*(ROOT / "server").rglob("*.py"), *(ROOT / "client").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {name}"
