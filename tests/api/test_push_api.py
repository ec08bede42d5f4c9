"""The Web Push doors: subscribe and unsubscribe with the write key, the application server
key and the service worker, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tests.channels.test_contract import browser_keys
from tests.conftest import make_settings

from nurture.api.app import create_app
from nurture.channels.config import ChannelsConfig, WebPushConfig
from nurture.channels.webpush import generate_vapid_key
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t


def _body(endpoint: str = "https://push.example.net/s/abc", **who: str) -> dict[str, object]:
    _, p256dh, auth = browser_keys()
    return {**who, "subscription": {"endpoint": endpoint, "expirationTime": None,
                                    "keys": {"p256dh": p256dh, "auth": auth}}}  # fmt: skip


def _rows(nurture: Nurture) -> list[tuple[int, str, object]]:
    p = t.push_subscriptions.c
    with nurture.db.read() as conn:
        rows = conn.execute(select(p.contact_id, p.endpoint, p.expired_at).order_by(p.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_subscribe_resolves_the_contact_like_ingest(
    client: TestClient, nurture: Nurture, write_key: str
) -> None:
    auth = (write_key, "")
    # Given a known user and a new anonymous visitor
    nurture.ingest([{"type": "identify", "userId": "u1", "traits": {"email": "u1@x.test"}}])
    known = nurture.contacts.lookup(user_id="u1")["id"]
    # When each subscribes, and the user subscribes the same browser again
    first = client.post("/v1/push/subscriptions", json=_body(userId="u1"), auth=auth)
    again = client.post("/v1/push/subscriptions", json=_body(userId="u1"), auth=auth)
    anon = client.post(
        "/v1/push/subscriptions", json=_body("https://push.example.net/s/z", anonymousId="a9"),
        auth=auth,
    )  # fmt: skip
    # Then the user's subscription is theirs (once), the visitor became a contact
    assert first.status_code == 200 and first.json()["contactId"] == known
    assert again.status_code == 200
    visitor = anon.json()["contactId"]
    assert visitor != known and nurture.contacts.lookup(anonymous_id="a9")["id"] == visitor
    assert _rows(nurture) == [
        (known, "https://push.example.net/s/abc", None),
        (visitor, "https://push.example.net/s/z", None),
    ]
    # And a Push Subscribed event was stored once per browser
    timeline = nurture.contacts.timeline(known)
    names = [e.get("event") for e in timeline["items"]]
    assert names.count("Push Subscribed") == 1


def test_unsubscribe_and_bad_requests(client: TestClient, nurture: Nurture, write_key: str) -> None:
    auth = (write_key, "")
    client.post("/v1/push/subscriptions", json=_body(userId="u1"), auth=auth)
    # When the browser unsubscribes, twice
    endpoint = "https://push.example.net/s/abc"
    url = "/v1/push/subscriptions"
    gone = client.request("DELETE", url, json={"endpoint": endpoint}, auth=auth)
    twice = client.request("DELETE", url, params={"endpoint": endpoint}, auth=auth)
    # Then it was removed once
    assert gone.json() == {"success": True, "removed": True}
    assert twice.json() == {"success": True, "removed": False}
    assert _rows(nurture) == []
    # And bad requests are refused, naming the field, without a key with 401
    bad_key = _body(userId="u1")
    bad_key["subscription"]["keys"]["p256dh"] = "AAAA"  # type: ignore[index]
    refused = client.post("/v1/push/subscriptions", json=bad_key, auth=auth)
    assert refused.status_code == 400
    assert refused.json()["error"]["path"] == "subscription.keys.p256dh"
    nobody = client.post("/v1/push/subscriptions", json=_body(), auth=auth)
    assert nobody.status_code == 400 and nobody.json()["error"]["path"] == "userId"
    assert client.post("/v1/push/subscriptions", json=_body(userId="u1")).status_code == 401


def test_service_worker_and_key_without_web_push(client: TestClient) -> None:
    # When the service worker and the key are asked for, with push not set up
    worker = client.get("/push/sw.js")
    key = client.get("/v1/push/vapid-public-key")
    # Then the worker is served as JavaScript and the key is a 404 that says why
    assert worker.status_code == 200
    assert worker.headers["content-type"].startswith("application/javascript")
    assert "showNotification" in worker.text and "openWindow" in worker.text
    assert key.status_code == 404 and "webpush" in key.json()["error"]["message"]


@pytest.fixture
def push_client(
    db: Database, clock: SimulatedClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, str]]:
    private, public = generate_vapid_key()
    monkeypatch.setenv("TEST_VAPID_KEY", private)
    channels = ChannelsConfig(
        push=WebPushConfig(
            provider="webpush", vapid_private_key_env="TEST_VAPID_KEY", subject="mailto:o@a.t"
        )
    )
    instance = Nurture(make_settings(str(db.url), channels=channels), clock=clock, db=db)
    instance.start()
    with TestClient(create_app(instance, manage_lifecycle=False)) as c:
        yield c, public
    instance.stop()


def test_the_application_server_key(push_client: tuple[TestClient, str]) -> None:
    client, public = push_client
    # When a site asks for the key to subscribe with
    answer = client.get("/v1/push/vapid-public-key")
    # Then it is the public half of the configured VAPID key
    assert answer.status_code == 200 and answer.json() == {"publicKey": public}
