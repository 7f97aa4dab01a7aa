"""The README's configuration table matches the settings the code has."""

from __future__ import annotations

from server.config import SETTINGS, env_name, flag_name
from tests.helpers import ROOT


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `--")}
    for spec in SETTINGS:
        row = rows.get(flag_name(spec.name))
        assert row is not None, f"README has no row for {flag_name(spec.name)}"
        assert f"`{env_name(spec.name)}`" in row
        if spec.default is not None and spec.name != "admin_host":
            assert f"`{spec.default}`" in row, f"README default for {spec.name} is not {spec.default}"
