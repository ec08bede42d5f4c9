"""Definitions as code: project files are validated, planned and applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.core import Nurture
from nurture.errors import NurtureError, ValidationError
from nurture.project import Project


def write(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_apply_adds_changes_and_removes_file_definitions(nurture: Nurture, tmp_path: Path) -> None:
    project = Project(tmp_path, nurture.db, nurture.clock)
    # Given two segment files, one using the other
    write(
        tmp_path, "segments/engaged.yaml", "key: engaged\nwhere: {event: Logged In, at_least: 3}\n"
    )
    write(
        tmp_path,
        "segments/more.yaml",
        "- key: engaged_pro\n  where:\n    all: [{segment: engaged}, {trait: plan, eq: pro}]\n",
    )
    # When applied
    plan = project.apply()
    # Then both are added, and a second apply has nothing to do
    assert sorted(d.key for d in plan.add) == ["engaged", "engaged_pro"]
    assert not project.plan()
    # When one file changes and the other goes
    write(
        tmp_path, "segments/engaged.yaml", "key: engaged\nwhere: {event: Logged In, at_least: 5}\n"
    )
    (tmp_path / "segments/more.yaml").unlink()
    plan = project.apply()
    # Then the plan says so and the store follows
    assert [d.key for d in plan.change] == ["engaged"]
    assert [d.key for d in plan.remove] == ["engaged_pro"]
    assert [s["key"] for s in nurture.segments.all()] == ["engaged"]


def test_an_api_segment_is_left_alone_and_file_segments_cannot_be_edited_by_api(
    nurture: Nurture, tmp_path: Path
) -> None:
    project = Project(tmp_path, nurture.db, nurture.clock)
    nurture.segments.save({"key": "from_api", "where": {"trait": "plan", "exists": True}})
    write(tmp_path, "segments/a.yaml", "key: from_file\nwhere: {trait: plan, eq: pro}\n")
    project.apply()
    assert sorted(s["key"] for s in nurture.segments.all()) == ["from_api", "from_file"]
    with pytest.raises(Exception, match="defined in the project files"):
        nurture.segments.save({"key": "from_file", "where": {"trait": "plan", "eq": "team"}})


def test_a_bad_file_is_reported_with_its_name_and_field(nurture: Nurture, tmp_path: Path) -> None:
    project = Project(tmp_path, nurture.db, nurture.clock)
    write(
        tmp_path,
        "segments/vip.yaml",
        "key: vip\nwhere:\n  all:\n    - {event: A, within_last: soon}\n",
    )
    with pytest.raises(ValidationError) as error:
        project.validate()
    assert error.value.path == "segments/vip.yaml"
    assert "where.all[0].event.within_last" in error.value.message
    write(tmp_path, "segments/vip.yaml", "key: vip\nwhere: {segment: nothing}\n")
    with pytest.raises(ValidationError, match="segment 'nothing' does not exist"):
        project.validate()


JOURNEY_YAML = """\
key: win_back
name: Win back lapsed buyers
trigger: {segment: lapsed}
steps:
  - {id: office, type: wait, until_window: {days: weekdays, from: 09:00, to: 18:00}}
  - {id: mail, type: send, channel: email, template: %s}
"""


def test_journeys_in_project_files_are_published_versioned_and_archived(
    nurture: Nurture, tmp_path: Path
) -> None:
    nurture.journeys.project_dir = tmp_path
    project = Project(tmp_path, nurture.db, nurture.clock, nurture.journeys)
    # Given a journey file that uses a segment defined in a file not applied yet
    write(tmp_path, "templates/win_back.liquid", "We miss you")
    write(tmp_path, "templates/win_back_2.liquid", "Still here")
    write(tmp_path, "segments/lapsed.yaml", "key: lapsed\nwhere: {not: {event: Order Completed}}\n")
    write(tmp_path, "journeys/win_back.yaml", JOURNEY_YAML % "win_back")
    # When applied: the segment and the journey, published as version 1
    plan = project.apply()
    assert sorted((d.kind, d.key) for d in plan.add) == [
        ("journey", "win_back"),
        ("segment", "lapsed"),
    ]
    journey = nurture.journeys.get("win_back")
    assert (journey["status"], journey["version"], journey["source"]) == ("active", 1, "file")
    assert not project.plan()
    # When the file changes: version 2
    write(tmp_path, "journeys/win_back.yaml", JOURNEY_YAML % "win_back_2")
    assert [d.key for d in project.apply().change] == ["win_back"]
    assert nurture.journeys.get("win_back")["version"] == 2
    # When the file goes: the journey is archived
    (tmp_path / "journeys/win_back.yaml").unlink()
    assert project.apply().archive == ["win_back"]
    assert nurture.journeys.get("win_back")["status"] == "archived"


def test_a_wrong_journey_file_names_the_file_and_field(nurture: Nurture, tmp_path: Path) -> None:
    nurture.journeys.project_dir = tmp_path
    project = Project(tmp_path, nurture.db, nurture.clock, nurture.journeys)
    write(tmp_path, "journeys/bad.yaml", JOURNEY_YAML % "missing")
    with pytest.raises(ValidationError) as caught:
        project.validate()
    assert caught.value.path == "journeys/bad.yaml.trigger.segment"


def test_validate_checks_template_files_strictly(nurture: Nurture, tmp_path: Path) -> None:
    from nurture.messages.templates import TemplateService

    templates = TemplateService(nurture.db, nurture.clock, tmp_path)
    project = Project(tmp_path, nurture.db, nurture.clock, templates=templates)
    # Given a good template file, validation passes
    write(tmp_path, "templates/welcome.yaml", "email:\n  subject: Hi {{ contact.first_name }}\n"
          "  html: <p>Welcome</p>\n")  # fmt: skip
    project.validate()
    # When a template reads a variable no message has, or does not compile
    write(tmp_path, "templates/broken.yaml", "sms:\n  body: Hi {{ contact.frist_name }}\n")
    with pytest.raises(NurtureError, match="frist_name") as unknown:
        project.validate()
    assert unknown.value.path is not None and "broken" in unknown.value.path
    write(tmp_path, "templates/broken.yaml", "sms:\n  body: Hi {% if x %}\n")
    # Then validation names the file, and the line and column of a syntax error
    with pytest.raises(NurtureError, match="line 1") as syntax:
        project.validate()
    assert "broken" in str(syntax.value)
