from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import make_settings
from tests.journeys.world import World, make_templates

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.webhooks import RecordingWebhookCaller


@pytest.fixture
def webhooks() -> RecordingWebhookCaller:
    return RecordingWebhookCaller()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    make_templates(folder)
    return folder


@pytest.fixture
def world(
    db: Database, clock: SimulatedClock, project: Path, webhooks: RecordingWebhookCaller
) -> Iterator[World]:
    settings = make_settings(str(db.url), project_dir=project, default_timezone="UTC")
    instance = Nurture(settings, clock=clock, db=db, webhooks=webhooks)
    instance.start()
    yield World(instance)
    instance.stop()
