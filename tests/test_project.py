"""Definitions as code: project files are validated, planned and applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.core import Nurture
from nurture.errors import ValidationError
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
