"""Admin API for consent and suppressions, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from nurture.core import Nurture
from nurture.store import tables as t


@pytest.fixture
def auth(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture
def ann(nurture: Nurture) -> int:
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"email": "a@example.com"}}])
    return int(nurture.contacts.lookup(user_id="ann")["id"])


def test_record_and_read_consent_with_proof(
    client: TestClient, auth: dict[str, str], ann: int
) -> None:
    # When a consent is recorded with its proof
    body = {
        "channel": "email",
        "topic": "newsletter",
        "state": "granted",
        "source": "signup form /pricing",
        "ip": "203.0.113.9",
        "wording": "Yes, send me the newsletter",
    }
    r = client.post(f"/api/contacts/{ann}/consents", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "granted" and r.json()["outboxId"] is None
    # Then it reads back as current state and as history
    r = client.get(f"/api/contacts/{ann}/consents", headers=auth)
    doc = r.json()
    assert [(c["channel"], c["topic"], c["state"]) for c in doc["current"]] == [
        ("email", "newsletter", "granted")
    ]
    assert doc["history"][0]["wording"] == "Yes, send me the newsletter"
    assert doc["history"][0]["ip"] == "203.0.113.9"


def test_double_opt_in_queues_the_confirmation(
    client: TestClient, auth: dict[str, str], ann: int, nurture: Nurture
) -> None:
    # When a double opt-in is asked for twice with the same Idempotency-Key
    body = {"channel": "email", "topic": "newsletter", "source": "form", "doubleOptIn": True}
    headers = {**auth, "Idempotency-Key": "k-1"}
    first = client.post(f"/api/contacts/{ann}/consents", json=body, headers=headers)
    again = client.post(f"/api/contacts/{ann}/consents", json=body, headers=headers)
    # Then consent is pending and one confirmation message waits in the outbox
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "pending"
    assert first.json()["outboxId"] == again.json()["outboxId"]
    with nurture.db.read() as conn:
        (row,) = conn.execute(select(t.outbox)).all()
    assert row.template == nurture.policy.double_opt_in_template
    assert row.payload["links"]["confirm"] == first.json()["confirmUrl"]
    assert first.json()["confirmUrl"].startswith(nurture.settings.base_url + "/t/confirm/")


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"channel": "fax", "source": "x"}, 422, "channel"),
        ({"channel": "email"}, 422, "source"),
        ({"channel": "push", "source": "x", "doubleOptIn": True}, 400, "channel"),
    ],
)
def test_bad_consent_requests_name_the_field(
    client: TestClient,
    auth: dict[str, str],
    ann: int,
    body: dict[str, object],
    status: int,
    path: str,
) -> None:
    r = client.post(f"/api/contacts/{ann}/consents", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["path"] == path


def test_unknown_contact_and_missing_key(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/api/contacts/999/consents", headers=auth).status_code == 404
    assert client.get("/api/contacts/1/consents").status_code == 401
    assert client.get("/api/suppressions", params={"address": "a@b.co"}).status_code == 401


def test_suppressions_check_add_remove(client: TestClient, auth: dict[str, str]) -> None:
    q = {"address": "Bob@Example.com"}
    # Given an address nobody suppressed
    assert client.get("/api/suppressions", params=q, headers=auth).json() == {
        "kind": "email",
        "suppressed": False,
        "reason": None,
        "createdAt": None,
        "detail": None,
    }
    # When it is added by hand, Then it is suppressed (in any case) as manual
    r = client.post(
        "/api/suppressions",
        json={"address": "bob@example.com", "detail": "asked by phone"},
        headers=auth,
    )
    assert r.json() == {"kind": "email", "added": True}
    got = client.get("/api/suppressions", params=q, headers=auth).json()
    assert (got["suppressed"], got["reason"], got["detail"]) == (True, "manual", "asked by phone")
    # And once removed, it is not
    assert client.delete("/api/suppressions", params=q, headers=auth).status_code == 204
    assert client.delete("/api/suppressions", params=q, headers=auth).status_code == 404
    assert not client.get("/api/suppressions", params=q, headers=auth).json()["suppressed"]


def test_phones_and_bad_addresses(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/api/suppressions", json={"address": "+1 201 555 0123", "reason": "stop"}, headers=auth
    )
    assert r.json() == {"kind": "phone", "added": True}
    got = client.get("/api/suppressions", params={"address": "+12015550123"}, headers=auth)
    assert got.json()["reason"] == "stop"
    r = client.post("/api/suppressions", json={"address": "12"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["path"] == "address"


def test_an_erased_address_cannot_be_removed(
    client: TestClient, auth: dict[str, str], ann: int
) -> None:
    assert client.delete(f"/api/contacts/{ann}", headers=auth).status_code == 200
    r = client.delete("/api/suppressions", params={"address": "a@example.com"}, headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "erased_address"
    got = client.get("/api/suppressions", params={"address": "a@example.com"}, headers=auth)
    assert got.json()["reason"] == "erased"
