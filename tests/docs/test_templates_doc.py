"""docs/templates.md is true: every example template is valid, renders as shown, and the
errors shown are the errors given."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from nurture.clock import SimulatedClock
from nurture.messages.template import check, parse_template
from nurture.messages.templates import Template, TemplateService

DOC = Path(__file__).resolve().parents[2] / "docs" / "templates.md"
TEXT = DOC.read_text()
EXAMPLES = re.findall(r"<!-- example: template (\S+) -->\n```yaml\n(.*?)```", TEXT, re.S)
RENDER = r"<!-- renders: (\S+) (\S+) (\S+) (\S+) -->\n```json\n(.*?)```\n\nrenders.*?\n\n"
RENDERS = re.findall(RENDER + r"```text\n(.*?)\n```", TEXT, re.S)
ERROR = r"<!-- error: (\S+) -->\n```yaml\n(.*?)```\n\nis refused with (``?)(.*?)\3\."
ERRORS = [(path, text, message) for path, text, _, message in re.findall(ERROR, TEXT, re.S)]


def service(tmp_path: Path) -> TemplateService:
    clock = SimulatedClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    return TemplateService(None, clock, tmp_path)  # type: ignore[arg-type]  # renders only


def test_the_page_has_examples() -> None:
    assert EXAMPLES and len(RENDERS) >= 3 and len(ERRORS) >= 2


@pytest.mark.parametrize(("key", "text"), EXAMPLES, ids=[k for k, _ in EXAMPLES])
def test_every_example_is_a_valid_template(key: str, text: str) -> None:
    assert check(parse_template(yaml.safe_load(text))) == []


@pytest.mark.parametrize(
    ("key", "channel", "locale", "zone", "context", "expected"),
    RENDERS,
    ids=[f"{r[1]}-{r[2]}" for r in RENDERS],
)
def test_examples_render_as_shown(
    tmp_path: Path, key: str, channel: str, locale: str, zone: str, context: str, expected: str
) -> None:
    # Given the example template / When rendered as the page says
    body = yaml.safe_load(dict(EXAMPLES)[key])
    template = Template(key, parse_template(body), "file", "docs")
    rendered = service(tmp_path).render(template, channel, json.loads(context), locale, zone)
    # Then the output is what the page shows (no-break spaces are shown as spaces)
    assert getattr(rendered, "body", None) == expected


@pytest.mark.parametrize(("path", "text", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_the_error_shown_is_the_error_given(path: str, text: str, message: str) -> None:
    problems = check(parse_template(yaml.safe_load(text)))
    assert problems and problems[0].path == path
    assert str(problems[0]) == " ".join(message.split())
