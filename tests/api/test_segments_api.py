"""The segments admin API: define with path-naming errors, preview, members, history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.testclient import TestClient

from nurture.core import Nurture


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def logins(nurture: Nurture, user: str, count: int) -> None:
    now = nurture.clock.now()
    nurture.ingest(
        [
            {
                "type": "track",
                "userId": user,
                "event": "Logged In",
                "timestamp": (now - timedelta(hours=i + 1)).isoformat(),
            }
            for i in range(count)
        ]
    )


SEGMENT: dict[str, Any] = {
    "key": "engaged",
    "name": "Engaged",
    "where": {"event": "Logged In", "at_least": 3, "within_last": "30d"},
}


def test_a_wrong_definition_is_refused_with_the_path_of_the_bad_field(
    client: TestClient, admin_key: str
) -> None:
    # When a segment has a malformed window deep inside
    bad = {
        "key": "x",
        "where": {
            "all": [{"trait": "plan", "eq": "pro"}, {"event": "A", "within_last": "30 days"}]
        },
    }
    response = client.post("/api/segments", json=bad, headers=auth(admin_key))
    # Then the error names the field and what was expected
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["path"] == "where.all[1].event.within_last"
    assert "expected a duration like 30d" in body["error"]["message"]


def test_define_preview_list_members_and_history(
    client: TestClient, admin_key: str, nurture: Nurture
) -> None:
    # Given two contacts, one engaged
    logins(nurture, "ann", 3)
    logins(nurture, "bob", 1)
    nurture.engine.evaluate_pending()
    # When a condition is previewed, nothing is saved
    preview = client.post(
        "/api/segments/preview",
        json={"where": SEGMENT["where"], "sample": 5},
        headers=auth(admin_key),
    )
    assert preview.status_code == 200
    assert preview.json()["count"] == 1
    assert [c["userId"] for c in preview.json()["sample"]] == ["ann"]
    assert client.get("/api/segments", headers=auth(admin_key)).json() == []
    # When the segment is created
    created = client.post("/api/segments", json=SEGMENT, headers=auth(admin_key))
    assert created.status_code == 201, created.text
    assert created.json()["members"] == 1
    assert created.json()["definition"]["where"] == SEGMENT["where"]
    # Then its members and their entry are listed
    members = client.get("/api/segments/engaged/members", headers=auth(admin_key)).json()
    assert len(members["items"]) == 1
    ann = members["items"][0]["contactId"]
    history = client.get("/api/segments/engaged/changes", headers=auth(admin_key)).json()
    assert [(h["contactId"], h["change"]) for h in history] == [(ann, "entered")]
    state = client.get(f"/api/contacts/{ann}/state", headers=auth(admin_key)).json()
    assert [s["key"] for s in state["segments"]] == ["engaged"]
    # And it can be replaced and deleted
    widened = {**SEGMENT, "where": {"event": "Logged In", "within_last": "30d"}}
    replaced = client.put("/api/segments/engaged", json=widened, headers=auth(admin_key))
    assert replaced.json()["members"] == 2
    assert client.delete("/api/segments/engaged", headers=auth(admin_key)).status_code == 204
    assert client.get("/api/segments/engaged", headers=auth(admin_key)).status_code == 404


def test_conditions_can_be_validated_alone(client: TestClient, admin_key: str) -> None:
    ok = client.post(
        "/api/conditions/validate",
        json={"trait": "plan", "in": ["pro", "team"]},
        headers=auth(admin_key),
    )
    assert ok.json() == {"valid": True, "where": {"trait": "plan", "in": ["pro", "team"]}}
    bad = client.post("/api/conditions/validate", json={"trait": "plan"}, headers=auth(admin_key))
    assert bad.status_code == 400
    assert bad.json()["error"]["path"] == "where.trait"


def test_segments_need_an_admin_key(client: TestClient, write_key: str) -> None:
    assert client.get("/api/segments", headers=auth(write_key)).status_code == 403
