"""docs/tracking.md is true: its Python example prints what the page shows, its settings
examples are valid settings, every provider URL it lists is a route of the app, and its
event table names exactly the events feedback can produce."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import get_args

import pytest
import yaml

from nurture.api import feedback, tracking
from nurture.messages.preferences import PreferencesConfig
from nurture.messages.providers import FeedbackConfig, FeedbackType
from nurture.messages.tracking import TrackingConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "tracking.md"
TEXT = DOC.read_text()
PYTHON = re.findall(r"<!-- example: python -->\n```python\n(.*?)```", TEXT, re.S)
OUTPUT = re.findall(r"<!-- output -->\n```text\n(.*?)```", TEXT, re.S)
SETTINGS = re.findall(r"<!-- example: settings -->\n```yaml\n(.*?)```", TEXT, re.S)
MODELS = {"tracking": TrackingConfig, "preferences": PreferencesConfig, "feedback": FeedbackConfig}


def test_the_python_example_prints_what_the_page_shows() -> None:
    # Given the page's example and its output
    assert len(PYTHON) == len(OUTPUT) == 1
    # When it runs
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(PYTHON[0], str(DOC), "exec"), {})
    # Then it prints exactly the output shown
    assert printed.getvalue() == OUTPUT[0]


@pytest.mark.parametrize("text", SETTINGS)
def test_settings_examples_are_valid(text: str) -> None:
    # Given a settings example
    values = yaml.safe_load(text)
    # Then each of its sections is a valid setting of its kind
    sections = [name for name in values if name in MODELS]
    assert sections
    for name in sections:
        MODELS[name].model_validate(values[name])


def test_every_provider_url_is_a_route() -> None:
    # Given the routes of the tracking and feedback routers
    paths = {getattr(r, "path", None) for r in (*tracking.router.routes, *feedback.router.routes)}
    # Then each documented /hooks/ and /t/ URL is one of them
    documented = set(re.findall(r"`(?:GET |POST |GET/POST )?(/(?:hooks|t)/[^`\s]+)`", TEXT))
    assert len(documented) >= 10
    for path in documented:
        assert path in paths, path


def test_the_event_table_names_every_feedback_type() -> None:
    # Given the event names in the table
    names = set(re.findall(r"^\| `(\w+)\.(\w+)` \|", TEXT, re.M))
    # Then each is a known feedback type, and every email type is listed
    assert {what for _, what in names} <= set(get_args(FeedbackType))
    listed = {what for channel, what in names if channel == "email"}
    assert listed == set(get_args(FeedbackType)) - {"replied"}
