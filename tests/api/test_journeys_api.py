"""The journeys admin API: drafts with path-naming errors, publish, status, API entries,
enrolments and retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from nurture.core import Nurture


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


JOURNEY: dict[str, Any] = {
    "key": "welcome",
    "trigger": {"api": True},
    "entry": {"reentry": "always"},
    "steps": [{"id": "hello", "type": "send", "channel": "email", "template": "welcome"}],
}


def templates(nurture: Nurture, project: Path) -> None:
    """Given a project folder holding the template the journey sends."""
    (project / "templates").mkdir(parents=True)
    (project / "templates" / "welcome.liquid").write_text("Hi {{ contact.traits.name }}")
    nurture.journeys.project_dir = project


def test_a_wrong_journey_is_refused_with_the_path(
    client: TestClient, admin_key: str, nurture: Nurture
) -> None:
    bad = {**JOURNEY, "steps": [{"id": "hello", "type": "send", "channel": "fax"}]}
    response = client.post("/api/journeys", json=bad, headers=auth(admin_key))
    assert response.status_code == 400
    assert response.json()["error"]["path"].startswith("steps[0].channel")


def test_validate_lists_every_problem_without_saving(
    client: TestClient, admin_key: str, nurture: Nurture
) -> None:
    body = {
        **JOURNEY,
        "steps": [
            {"id": "a", "type": "send", "channel": "email", "template": "nope", "next": "end"},
            {"id": "b", "type": "send", "channel": "email", "template": "nope"},
        ],
    }
    response = client.post("/api/journeys/validate", json=body, headers=auth(admin_key))
    assert response.status_code == 200
    paths = [p["path"] for p in response.json()["problems"]]
    assert paths == ["steps[1]", "steps[0].template", "steps[1].template"]
    assert client.get("/api/journeys/welcome", headers=auth(admin_key)).status_code == 404


def test_publish_enrol_and_inspect(
    client: TestClient, admin_key: str, nurture: Nurture, tmp_path: Path
) -> None:
    templates(nurture, tmp_path)
    h = auth(admin_key)
    saved = client.post("/api/journeys", json=JOURNEY, headers=h)
    assert saved.status_code == 201 and saved.json()["status"] == "draft"
    published = client.post("/api/journeys/welcome/publish", headers=h).json()
    assert (published["status"], published["version"]) == ("active", 1)
    nurture.ingest([{"type": "identify", "userId": "u1", "traits": {"name": "Ann"}}])
    contact = nurture.contacts.lookup(user_id="u1")["id"]
    entry = client.post(
        "/api/journeys/welcome/enrolments",
        json={"contactId": contact, "idempotencyKey": "k1", "context": {"plan": "pro"}},
        headers=h,
    )
    assert entry.status_code == 201 and entry.json()["status"] == "entered"
    again = client.post(
        "/api/journeys/welcome/enrolments",
        json={"contactId": contact, "idempotencyKey": "k1"},
        headers=h,
    )
    assert again.json()["status"] == "refused"
    nurture.journey_runtime.run_due()
    (listed,) = client.get("/api/journeys/welcome/enrolments", headers=h).json()
    detail = client.get(f"/api/enrolments/{listed['id']}", headers=h).json()
    assert detail["status"] == "completed"
    assert [s["outcome"] for s in detail["steps"]] == ["sent"]
    assert [m["template"] for m in detail["messages"]] == ["welcome"]
    assert detail["context"]["trigger"]["properties"] == {"plan": "pro"}
    paused = client.post("/api/journeys/welcome/pause", headers=h).json()
    assert paused["status"] == "paused"
    refused = client.post(
        "/api/journeys/welcome/enrolments", json={"contactId": contact}, headers=h
    )
    assert refused.status_code == 400
    assert client.post("/api/journeys/welcome/resume", headers=h).json()["status"] == "active"
    versions = client.get("/api/journeys/welcome/versions", headers=h).json()
    assert [v["version"] for v in versions] == [1]
    archived = client.post("/api/journeys/welcome/archive", headers=h).json()
    assert archived["status"] == "archived"
    retry = client.post(f"/api/enrolments/{listed['id']}/retry", headers=h)
    assert retry.status_code == 400
