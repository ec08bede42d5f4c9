"""Every setting is documented in docs/settings.md, by field name and environment variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nurture.settings import ENV_PREFIX, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
FIELDS = sorted(Settings.model_fields)


@pytest.mark.parametrize("name", FIELDS)
def test_setting_is_documented(name: str) -> None:
    # Given the settings page
    text = DOC.read_text()
    env = f"{ENV_PREFIX}{name.upper()}"
    # Then the setting has a row in the reference table and its own section
    row = re.search(rf"^\| \[{name}\]\(#{name}\) \| `{env}` \| `{name}` \|", text, re.M)
    assert row, f"no reference table row for {name} ({env})"
    section = re.search(rf"^### {name}\n\n`{env}`\. \S", text, re.M)
    assert section, f"no '### {name}' section starting with `{env}`."


def test_documented_defaults_match_the_code() -> None:
    # Given the reference table
    text = DOC.read_text()
    for name, info in Settings.model_fields.items():
        default = info.default
        cell = re.search(rf"^\| \[{name}\]\(#{name}\) \|.*\| (?P<default>[^|]+) \|$", text, re.M)
        assert cell, name
        documented = cell.group("default").strip()
        # Then the default column shows the code's default
        if default is None:
            assert documented == "none", f"{name}: documented {documented!r}, default is None"
        else:
            assert documented.startswith(f"`{default}`"), f"{name}: {documented!r} != {default!r}"


def test_no_unknown_setting_is_documented() -> None:
    # Given the environment variable names on the page
    text = DOC.read_text()
    documented = set(re.findall(rf"`({ENV_PREFIX}[A-Z_]+)`", text))
    # Then each is a setting, or NURTURE_CONFIG (which names the YAML file)
    known = {f"{ENV_PREFIX}{name.upper()}" for name in FIELDS} | {f"{ENV_PREFIX}CONFIG"}
    assert documented - known == set()
