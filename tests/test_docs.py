"""The documents agree with the code and with each other.

- The README's configuration table matches the settings.
- Every relative link in the README, the changelog and every docs/*.md page (found when
  the test runs, so pages added later are checked too) points at a file in this
  repository, and every #anchor at a heading that exists.
- The README is a quick start a user can find things in: at most about 400 lines, a table
  of contents, and a link to every page in docs/.
- The TLS, UDP and nc commands of the README and docs/tls-udp.md echo and exit, run as
  written against a live server; the image size the docs state is what the packages weigh.
- Nothing but .ci/run points at the workspace's shared directory next to the checkout:
  a clone has none.
- The licence, the changelog and the py.typed markers are where packaging says.
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import server
from server.config import SETTINGS, env_name, flag_name
from tests.conftest import ServerFactory
from tests.helpers import ROOT

# Built so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + "shared")
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCUMENTS = ["README.md", "CHANGELOG.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 420  # "at most about 400": a quick start, the configuration table, links


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `--")}
    for spec in SETTINGS:
        row = rows.get(flag_name(spec.name))
        unit = f" {spec.metadata['unit']}" if spec.metadata.get("unit") else ""
        names = f"| `{flag_name(spec.name)}` | `{env_name(spec.name)}` |"
        suggested = f"{names} `{spec.default}`{unit} | {spec.metadata['help']} |"
        assert row is not None, f"README has no row for {flag_name(spec.name)}; for instance:\n{suggested}"
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


def _broken(source: Path, target: str) -> bool:
    """Whether a relative link from ``source`` misses its file, or its #anchor a heading."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return False
    path_part, _, anchor = target.partition("#")
    linked = (source.parent / path_part).resolve() if path_part else source
    if not linked.is_relative_to(ROOT) or not linked.exists():
        return True
    return bool(anchor) and linked.suffix == ".md" and anchor not in _anchors(linked.read_text())


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_resolve_to_files_and_headings_in_the_repository(document: str) -> None:
    source = ROOT / document
    broken = [target for target in LINK.findall(source.read_text()) if _broken(source, target)]
    assert not broken, f"{document}: links that do not resolve in this repository: {broken}"


def test_the_readme_links_the_design_document() -> None:
    architecture = (ROOT / "README.md").read_text().split("## Architecture", 1)[1].split("\n## ", 1)[0]
    assert "(docs/design.md)" in architecture


def test_licence_changelog_and_type_markers_are_packaged() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    package_data = project["tool"]["setuptools"]["package-data"]
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {name.split(".")[0] for name in included} == {"server", "client"}
    for package in ("server", "client"):
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in package_data[package]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog
    assert re.search(rf"^## {re.escape(server.__version__)} - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)


def test_the_readme_is_a_quick_start_with_contents_linking_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    headings = {_slug(h) for h in re.findall(r"^## (.+)$", readme, re.MULTILINE)} - {"contents"}
    listed = {anchor for anchor in re.findall(r"\]\(#([^)]+)\)", contents)}
    assert headings <= listed, f"not in the table of contents: {headings - listed}"
    for page in sorted((ROOT / "docs").glob("*.md")):
        # Pages from other branches are linked by the lead when they land: only the guides
        # this README introduces must be there, and they must exist (the link test above).
        if page.name in GUIDES:
            assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    for name in GUIDES[:-1]:  # design.md is the lead's, linked from here as it is
        text = (ROOT / "docs" / name).read_text()
        assert text.startswith("# ") and "(../README.md)" in text, f"docs/{name}: no title or no way back"


GUIDES = [
    "operations-and-signals.md",
    "load-balancers.md",
    "tls-udp.md",
    "observability.md",
    "performance.md",
    "design.md",
]


def test_the_link_check_finds_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    """The checker itself can fail: a missing file and a missing heading are reported."""
    page = ROOT / "docs" / "design.md"
    text = "[a](no-such-file.md) [b](design.md#no-such-heading) [c](../README.md#configuration)"
    broken = [t for t in LINK.findall(text) if _broken(page, t)]
    assert broken == ["no-such-file.md", "design.md#no-such-heading"]


def _code_lines(document: str) -> list[str]:
    """The indented commands of a markdown document, continued lines joined, comments stripped."""
    lines: list[str] = []
    continued = False
    for line in (ROOT / document).read_text().splitlines():
        if continued:
            lines[-1] = lines[-1][:-1].rstrip() + " " + re.sub(r"\s+#\s.*$", "", line.strip())
        elif line.startswith("    ") and not line.startswith("     "):
            lines.append(re.sub(r"\s+#\s.*$", "", line.strip()))
        continued = bool(lines) and lines[-1].endswith("\\")
    return lines


CLIENT_COMMANDS = ("ncat --ssl", "s_client", "OPENSSL:", "nc -u", "| nc -N", "nc -N localhost 7007 <")


def _documented_client_commands() -> list[tuple[str, str]]:
    found = []
    for document in ("README.md", "docs/tls-udp.md"):
        for line in _code_lines(document):
            if any(c in line for c in CLIENT_COMMANDS) and (document, line) not in found:
                found.append((document, line))
    return found


def test_every_documented_tls_check_is_among_the_commands_run() -> None:
    commands = [command for _, command in _documented_client_commands()]
    assert sum("s_client" in c for c in commands) == 1 and sum("ncat --ssl" in c for c in commands) >= 2
    assert any("OPENSSL:" in c for c in commands) and any("nc -u" in c for c in commands)


@pytest.mark.parametrize(
    ("document", "command"), _documented_client_commands(), ids=lambda v: re.sub(r"\W+", "-", v)[:60]
)
def test_a_documented_client_command_echoes_and_exits(
    make_server: ServerFactory, tmp_path: Path, document: str, command: str
) -> None:
    tool = command.split("|")[-1].split()[0] if "|" in command else command.split()[0]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    subject = "/CN=localhost"
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", subject, "-addext", san],
        cwd=tmp_path, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    payload = os.urandom(100_000)
    (tmp_path / "file").write_bytes(payload)
    server, recorder = make_server(
        tls_port=0, tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem"), udp_port=0
    )
    assert server.tls_address is not None and server.udp_address is not None
    ports = {"7007": server.server_address[1], "7443": server.tls_address[1], "7009": server.udp_address[1]}
    runnable = re.sub(r"\b(7007|7443|7009)\b", lambda m: str(ports[m.group(1)]), command)
    try:
        result = subprocess.run(["sh", "-c", runnable], cwd=tmp_path, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{document}: {command!r} did not exit within 30 s")
    assert result.returncode == 0, (command, result.stderr)
    if "printf 'hello\\n'" in command:
        expected, echoed = b"hello\n", result.stdout
    elif "> echoed" in command:
        expected, echoed = payload, (tmp_path / "echoed").read_bytes()
    else:
        expected, echoed = payload, result.stdout
    closed = [(e.data.get("bytes_in"), e.data.get("bytes_out")) for e in recorder.named("closed")]
    assert echoed == expected, (
        f"{document}: {command!r} got {len(echoed)} of {len(expected)} bytes (server in/out: {closed})",
        result.stderr,
    )


def test_the_stated_image_size_is_what_the_packages_weigh(tmp_path: Path) -> None:
    """The project's layers are its two packages, byte-compiled, and a user: the figure the
    docs give ("about N MB") must be within a quarter of what they weigh here."""
    stated = {
        float(n)
        for document in ("README.md", "docs/operations-and-signals.md")
        for n in re.findall(r"about (\d+(?:\.\d+)?) MB", (ROOT / document).read_text())
    }
    assert len(stated) == 1, f"the docs give different image sizes: {stated}"
    for package in ("server", "client"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(tmp_path, quiet=1)
    weight = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file()) / 1e6
    assert abs(weight - stated.pop()) <= 0.25 * weight, f"the packages weigh {weight:.2f} MB"
