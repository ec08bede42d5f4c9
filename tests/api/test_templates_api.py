"""The templates admin API: save with field/line/column errors, read, list, preview with a
real contact or an inline context, delete; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from nurture.core import Nurture
from nurture.store import tables as t


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


TEMPLATE: dict[str, Any] = {
    "name": "Cart reminder",
    "currency": "EUR",
    "defaults": {"first_name": "there"},
    "email": {
        "subject": "{{ contact.first_name }}, your cart is waiting",
        "html": "<p>Total {{ event.properties.total | money }}</p>"
        '<a href="{{ links.unsubscribe }}">Unsubscribe</a>',
    },
    "locales": {"de": {"email": {"subject": "{{ contact.first_name }}, dein Warenkorb wartet"}}},
}


def test_save_read_list_preview_delete(
    client: TestClient, admin_key: str, nurture: Nurture
) -> None:
    # Given a saved template
    put = client.put("/api/templates/cart", json=TEMPLATE, headers=auth(admin_key))
    assert put.status_code == 200, put.text
    assert put.json()["channels"] == ["email"] and put.json()["locales"] == ["de"]
    # Then it can be read and is listed
    got = client.get("/api/templates/cart", headers=auth(admin_key)).json()
    assert got["definition"]["email"]["subject"].startswith("{{ contact.first_name }}")
    listed = client.get("/api/templates", headers=auth(admin_key)).json()
    assert [(t["key"], t["source"], t["error"]) for t in listed] == [("cart", "api", None)]
    # When previewed for a German contact with an inline event
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "u1",
                "messageId": "m1",
                "traits": {"first_name": "Jonas", "locale": "de-DE"},
            }
        ]
    )
    with nurture.db.read() as conn:
        contact = conn.execute(select(t.contacts.c.id)).scalar_one()
    body = {"contactId": contact, "context": {"event": {"properties": {"total": 99.5}}}}
    shown = client.post("/api/templates/cart/preview", json=body, headers=auth(admin_key))
    # Then it renders in German with the contact's data
    assert shown.status_code == 200, shown.text
    content = shown.json()["content"]
    assert content["subject"] == "Jonas, dein Warenkorb wartet"
    assert "Total 99,50\xa0€" in content["html"] and shown.json()["variant"] == "de"
    # When previewed with an inline context only
    inline = {"context": {"contact": {}, "event": {"properties": {"total": 5}}}, "locale": "en"}
    shown = client.post("/api/templates/cart/preview", json=inline, headers=auth(admin_key))
    assert shown.json()["content"]["subject"] == "there, your cart is waiting"
    # And a preview missing a value says which
    missing = {"context": {"contact": {}}}
    refused = client.post("/api/templates/cart/preview", json=missing, headers=auth(admin_key))
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": "missing_value",
        "message": "has no value and no default",
        "path": "event",
    }
    # When deleted, it is gone
    assert client.delete("/api/templates/cart", headers=auth(admin_key)).status_code == 204
    gone = client.get("/api/templates/cart", headers=auth(admin_key))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "template_not_found"


def test_invalid_templates_are_refused_with_field_line_and_column(
    client: TestClient, admin_key: str
) -> None:
    # Given a body with a syntax error on its second line
    bad = {"sms": {"body": "Hi\n{{ contact.first_name | }}"}}
    response = client.put("/api/templates/bad", json=bad, headers=auth(admin_key))
    # Then it is refused naming the field, line and column
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "template_syntax" and error["path"] == "sms.body"
    assert "(line 2, column 4)" in error["message"]
    # And validate lists every problem without saving
    many = {"email": {"subject": "{{ contact.frist_name }}", "html": "{{ links.nope }}"}}
    checked = client.post("/api/templates/validate", json=many, headers=auth(admin_key)).json()
    assert checked["valid"] is False
    assert [(p["path"], p["line"], p["column"]) for p in checked["problems"]] == [
        ("email.subject", 1, 4),
        ("email.html", 1, 4),
    ]
    # And a shape error names the field
    shape = client.put("/api/templates/x", json={"email": {"subjet": "x"}}, headers=auth(admin_key))
    assert shape.status_code == 400 and shape.json()["error"]["path"] == "email.subjet"


def test_templates_need_an_admin_key(client: TestClient, write_key: str) -> None:
    assert client.get("/api/templates").status_code == 401
    assert client.get("/api/templates", headers=auth(write_key)).status_code == 403
