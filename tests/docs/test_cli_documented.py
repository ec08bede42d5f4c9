"""Every command of the `nurture` CLI, and each of its options, is documented in docs/cli.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from nurture.cli.main import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every leaf command as ('nurture keys create', command). Typer ships its own copy of
    Click, so groups and options are recognised by their attributes, not their classes."""
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))
    else:
        yield " ".join(("nurture", *path)), command


COMMANDS = dict(walk(typer.main.get_command(app)))


def section(text: str, title: str) -> str:
    """The text of the '## title' section."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_cli_has_commands() -> None:
    assert "nurture serve" in COMMANDS
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_is_documented(name: str) -> None:
    # Given the CLI page
    text = DOC.read_text()
    # Then the command has its own section and a row in the overview table
    assert f"\n## {name}\n" in text, f"no '## {name}' section in docs/cli.md"
    assert f"| [`{name}`](#{name.replace(' ', '-')}) |" in text, f"{name} not in the overview"
    # And each of its options and arguments is mentioned in that section
    body = section(text, name)
    for param in COMMANDS[name].params:
        if param.param_type_name == "option":
            flags = [f for f in param.opts if f.startswith("--")]
            assert any(f"`{f}" in body for f in flags), f"{name}: option {flags} undocumented"
        else:
            assert (param.name or "").upper() in body, f"{name}: argument {param.name}"
