"""The contacts admin API over HTTP: data in through /v1/batch, read and erased through
/api, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from nurture.core import Nurture


@pytest.fixture
def admin(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


def batch(client: TestClient, write_key: str, *messages: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/batch", json={"batch": list(messages)}, auth=(write_key, ""))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def at(minute: int) -> str:
    return f"2026-02-01T10:{minute:02d}:00Z"


@pytest.fixture
def world(client: TestClient, write_key: str) -> None:
    """Given a visitor who browses anonymously, then signs up and identifies; a second
    customer; and a rejected message carrying the first one's user id."""
    batch(
        client,
        write_key,
        {"type": "page", "anonymousId": "anon-42", "name": "Pricing", "timestamp": at(0)},
        {"type": "track", "userId": "cust-2", "event": "Login", "timestamp": at(1)},
        {"type": "identify", "userId": "cust-2", "traits": {"email": "zed@example.org"}},
    )
    batch(
        client,
        write_key,
        {"type": "track", "userId": "u-42", "event": "Signed Up", "timestamp": at(2)},
    )
    result = batch(
        client,
        write_key,
        {
            "type": "identify",
            "userId": "u-42",
            "anonymousId": "anon-42",
            "traits": {"email": "Dana@Example.com", "name": "Dana Scully", "phone": "+33612345678"},
            "timestamp": at(3),
        },
        {
            "type": "track",
            "userId": "u-42",
            "event": "Order Completed",
            "timestamp": at(4),
            "properties": {"total": 99.5},
        },
        {"type": "group", "userId": "u-42", "groupId": "fbi", "traits": {"name": "FBI"}},
        {"type": "track", "userId": "u-42", "event": "Broken", "timestamp": "yesterday"},
    )
    assert len(result["rejected"]) == 1


def test_search_and_pages(client: TestClient, admin: dict[str, str], world: None) -> None:
    # When searching by part of the name and listing one contact per page
    found = client.get("/api/contacts", params={"q": "scully"}, headers=admin)
    first = client.get("/api/contacts", params={"limit": 1}, headers=admin).json()
    second = client.get(
        "/api/contacts", params={"limit": 1, "after_id": first["nextAfterId"]}, headers=admin
    ).json()
    # Then the search finds Dana, and the pages continue where the last ended
    assert found.status_code == 200, found.text
    (dana,) = found.json()["items"]
    assert (dana["userId"], dana["email"], dana["name"]) == (
        "u-42",
        "dana@example.com",
        "Dana Scully",
    )
    assert first["items"][0]["id"] < second["items"][0]["id"]
    assert second["nextAfterId"] is None  # two live contacts: the merged one is not listed


def test_lookup_by_anonymous_id_after_identify(
    client: TestClient, admin: dict[str, str], world: None
) -> None:
    # When looking up the anonymous id the visitor browsed with
    response = client.get("/api/contacts/lookup", params={"anonymous_id": "anon-42"}, headers=admin)
    # Then it is the identified contact, with the merged history
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["userId"] == "u-42" and body["anonymousIds"] == ["anon-42"]
    assert body["eventCount"] == 5
    assert [a["groupId"] for a in body["accounts"]] == ["fbi"]
    (old_id,) = body["mergedContactIds"]
    # And the merged-away id answers with the survivor
    again = client.get(f"/api/contacts/{old_id}", headers=admin).json()
    assert again["id"] == body["id"] and again["traits"]["name"] == "Dana Scully"


def test_timeline_newest_first(client: TestClient, admin: dict[str, str], world: None) -> None:
    dana = client.get("/api/contacts/lookup", params={"user_id": "u-42"}, headers=admin).json()
    # When reading the timeline in pages of two, then only track events
    url = f"/api/contacts/{dana['id']}/events"
    page1 = client.get(url, params={"limit": 2}, headers=admin).json()
    page2 = client.get(url, params={"limit": 2, "before": page1["nextBefore"]}, headers=admin)
    tracks = client.get(url, params={"type": "track"}, headers=admin).json()
    # Then events come newest first across pages, and the filter applies
    events = page1["items"] + page2.json()["items"]
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert [e["event"] for e in page1["items"]][1] == "Order Completed"
    assert page1["items"][1]["properties"] == {"total": 99.5}
    assert [e["event"] for e in tracks["items"]] == ["Order Completed", "Signed Up"]


def test_accounts(client: TestClient, admin: dict[str, str], world: None) -> None:
    listed = client.get("/api/accounts", headers=admin).json()
    detail = client.get("/api/accounts/fbi", headers=admin).json()
    missing = client.get("/api/accounts/cia", headers=admin)
    assert [(a["groupId"], a["memberCount"]) for a in listed["items"]] == [("fbi", 1)]
    assert detail["traits"] == {"name": "FBI"} and detail["members"][0]["userId"] == "u-42"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_export_then_erase(
    client: TestClient, admin: dict[str, str], nurture: Nurture, world: None
) -> None:
    dana = client.get(
        "/api/contacts/lookup", params={"email": "DANA@example.com"}, headers=admin
    ).json()
    # When exporting Dana
    export = client.get(f"/api/contacts/{dana['id']}/export", headers=admin)
    # Then the download holds her events, identities, merge and rejected input
    assert export.status_code == 200, export.text
    assert "attachment" in export.headers["content-disposition"]
    doc = export.json()
    assert doc["contact"]["email"] == "dana@example.com"
    assert len(doc["events"]) == 5 and len(doc["merges"]) == 1
    assert {"kind": "anonymous_id", "value": "anon-42"} in doc["identities"]
    assert len(doc["rejectedInput"]) == 1 and "u-42" in doc["rejectedInput"][0]["raw"]
    # When erasing her
    erased = client.delete(f"/api/contacts/{dana['id']}", headers=admin)
    # Then the answer says what went, and nothing of her is left to read
    assert erased.status_code == 200, erased.text
    report = erased.json()
    assert report["eventsDeleted"] == 5 and report["rejectedDeleted"] == 1
    assert report["contactsDeleted"] == 2 and report["suppressed"] == ["email", "phone"]
    for url in (f"/api/contacts/{dana['id']}", f"/api/contacts/{dana['id']}/events"):
        gone = client.get(url, headers=admin)
        assert gone.status_code == 404 and gone.json()["error"]["path"] == "contact_id"
    lookup = client.get("/api/contacts/lookup", params={"anonymous_id": "anon-42"}, headers=admin)
    assert lookup.status_code == 404
    assert client.get("/api/contacts", params={"q": "scully"}, headers=admin).json()["items"] == []
    assert client.delete(f"/api/contacts/{dana['id']}", headers=admin).status_code == 404
    assert nurture.rejected.count() == 0
    assert nurture.privacy.is_suppressed(
        email="dana@EXAMPLE.com", phone="06 12 34 56 78", region="FR"
    )
    # And the other customer is untouched
    zed = client.get("/api/contacts/lookup", params={"user_id": "cust-2"}, headers=admin).json()
    assert zed["email"] == "zed@example.org" and zed["eventCount"] == 2


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/contacts"),
        ("GET", "/api/contacts/1"),
        ("GET", "/api/contacts/lookup?user_id=x"),
        ("GET", "/api/contacts/1/events"),
        ("GET", "/api/contacts/1/export"),
        ("DELETE", "/api/contacts/1"),
        ("GET", "/api/accounts"),
        ("GET", "/api/accounts/x"),
    ],
)
def test_every_route_needs_an_admin_key(
    client: TestClient, write_key: str, method: str, url: str
) -> None:
    # When calling without a key, and with a write key
    anonymous = client.request(method, url)
    writer = client.request(method, url, headers={"Authorization": f"Bearer {write_key}"})
    # Then 401 and 403, as JSON errors
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert writer.status_code == 403 and writer.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("url", "status", "path"),
    [
        ("/api/contacts/999999", 404, "contact_id"),
        ("/api/contacts/0", 422, "contact_id"),
        ("/api/contacts/abc", 422, "contact_id"),
        (f"/api/contacts/{2**64}", 422, "contact_id"),
        ("/api/contacts?limit=0", 422, "limit"),
        ("/api/contacts?limit=1001", 422, "limit"),
        ("/api/contacts?after_id=-1", 422, "after_id"),
        ("/api/contacts?q=%00", 400, "q"),
        ("/api/contacts/lookup", 400, "user_id"),
        ("/api/contacts/lookup?email=nope", 400, "email"),
        ("/api/contacts/lookup?user_id=ghost", 404, "user_id"),
        ("/api/contacts/1/events?type=click", 422, "type"),
        ("/api/contacts/1/events?before=soon", 404, "contact_id"),
        ("/api/accounts?limit=5000", 422, "limit"),
    ],
)
def test_bad_requests_are_json_errors(
    client: TestClient, admin: dict[str, str], url: str, status: int, path: str
) -> None:
    # When a request names nothing that exists, or is malformed
    response = client.get(url, headers=admin)
    # Then it is a 4xx JSON error naming the field
    assert response.status_code == status, response.text
    assert response.json()["error"]["path"] == path


def test_bad_cursor_on_existing_contact(
    client: TestClient, admin: dict[str, str], world: None
) -> None:
    dana = client.get("/api/contacts/lookup", params={"user_id": "u-42"}, headers=admin).json()
    response = client.get(
        f"/api/contacts/{dana['id']}/events", params={"before": "soon"}, headers=admin
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid",
        "message": "expected a cursor from `next_before` or an ISO-8601 date-time",
        "path": "before",
    }
