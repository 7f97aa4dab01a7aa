"""The documents agree with the code and with each other.

- The README's configuration table matches the settings.
- Every relative link in the README, the changelog and docs/ points at a file in this
  repository (and at a heading that exists).
- Nothing but .ci/run points at the workspace's shared directory next to the checkout:
  a clone has none.
- The licence, the changelog and the py.typed markers are where packaging says.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import server
from server.config import SETTINGS, env_name, flag_name
from tests.helpers import ROOT

# Built so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + "shared")
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCUMENTS = ["README.md", "CHANGELOG.md", "docs/design.md"]


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `--")}
    for spec in SETTINGS:
        row = rows.get(flag_name(spec.name))
        assert row is not None, f"README has no row for {flag_name(spec.name)}"
        assert f"`{env_name(spec.name)}`" in row
        if spec.default is not None and spec.name != "admin_host":
            assert f"`{spec.default}`" in row, f"README default for {spec.name} is not {spec.default}"


def _repository_files() -> Iterator[Path]:
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            yield Path(directory, name)


def test_nothing_but_ci_refers_to_the_workspace_outside_the_repository() -> None:
    offenders = []
    for path in _repository_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative == ".ci/run":
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        offenders += [f"{relative}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, f"references to the shared workspace directory (a clone has none): {offenders}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE)}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_resolve_to_files_and_headings_in_the_repository(document: str) -> None:
    source = ROOT / document
    text = source.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (source.parent / path_part).resolve() if path_part else source
        missing_file = not linked.is_relative_to(ROOT) or not linked.exists()
        if missing_file or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text())):
            broken.append(target)
    assert not broken, f"{document}: links that do not resolve in this repository: {broken}"


def test_the_readme_links_the_design_document() -> None:
    architecture = (ROOT / "README.md").read_text().split("## Architecture", 1)[1].split("\n## ", 1)[0]
    assert "(docs/design.md)" in architecture


def test_licence_changelog_and_type_markers_are_packaged() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    package_data = project["tool"]["setuptools"]["package-data"]
    for package in {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}:
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in package_data[package]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog
    assert re.search(rf"^## {re.escape(server.__version__)} - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)
