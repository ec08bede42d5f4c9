"""The real Segment SDK (analytics-python) sends through to stored events, exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from segment.analytics import Client
from sqlalchemy import select

from nurture.core import Nurture
from nurture.store import tables as t


def _stored(nurture: Nurture) -> dict[str, Any]:
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.events)).mappings().all()
    return {r["message_id"]: dict(r) for r in rows}


def _send_everything(client: Client) -> list[dict[str, Any]]:
    calls = [
        client.identify(
            "sdk-user", {"email": "sdk@example.com", "plan": "pro"}, anonymous_id="sdk-anon"
        ),
        client.track("sdk-user", "Order Completed", {"total": 42.5, "currency": "EUR"}),
        client.page("sdk-user", category="Docs", name="Pricing", properties={"path": "/pricing"}),
        client.screen("sdk-user", name="Home", properties={"tab": 1}),
        client.group("sdk-user", "acme-inc", {"name": "Acme", "employees": 50}),
        client.alias("sdk-old-id", "sdk-user"),
        client.track(anonymous_id="sdk-anon-2", event="Viewed Product"),
    ]
    for ok, _ in calls:
        assert ok
    return [msg for _, msg in calls]


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_segment_sdk_messages_are_stored_once(
    live_server: str, nurture: Nurture, write_key: str, use_gzip: bool
) -> None:
    errors: list[Any] = []
    # Given the official Python SDK pointed at Nurture with a write key
    client = Client(
        write_key,
        host=live_server,
        gzip=use_gzip,
        on_error=lambda e, b: errors.append(e),
        max_retries=2,
        upload_size=100,
    )
    # When it sends one of each call and flushes
    sent = _send_everything(client)
    client.flush()
    client.join()
    # Then every message is stored once, with its type and content
    assert errors == []
    stored = _stored(nurture)
    assert sorted(stored) == sorted(m["messageId"] for m in sent)
    by_type = {r["type"]: r for r in stored.values()}
    assert set(by_type) == {"identify", "track", "page", "screen", "group", "alias"}
    order = next(r for r in stored.values() if r["event"] == "Order Completed")
    assert order["properties"] == {"total": 42.5, "currency": "EUR"}
    assert by_type["page"]["event"] == "Pricing" and by_type["screen"]["event"] == "Home"
    assert by_type["identify"]["context"]["library"]["name"] == "analytics-python"
    # and the identity model followed: one contact for sdk-user (with the alias), one anonymous
    with nurture.db.read() as conn:
        contacts = conn.execute(
            select(t.contacts.c.user_id, t.contacts.c.email).where(
                t.contacts.c.merged_into.is_(None)
            )
        ).all()
        account = conn.execute(select(t.accounts.c.name, t.accounts.c.traits)).one()
    assert sorted(c.user_id or "" for c in contacts) == ["", "sdk-user"]
    assert ("sdk-user", "sdk@example.com") in [tuple(c) for c in contacts]
    assert account.name == "Acme" and account.traits["employees"] == 50

    # When the SDK sends the very same messages again (a retry after a lost response)
    resend = Client(
        write_key, host=live_server, gzip=use_gzip, on_error=lambda e, b: errors.append(e)
    )
    for msg in sent:
        resend.queue.put(msg)
    resend.flush()
    resend.join()
    # Then nothing new is stored
    assert errors == []
    assert sorted(_stored(nurture)) == sorted(stored)


def test_segment_sdk_with_a_wrong_key_reports_the_error(
    live_server: str, nurture: Nurture, write_key: str
) -> None:
    errors: list[Any] = []
    client = Client(
        "nk_w_not-a-key", host=live_server, max_retries=0, on_error=lambda e, b: errors.append(e)
    )
    client.track("u", "E")
    client.flush()
    client.join()
    assert len(errors) == 1 and getattr(errors[0], "status", None) == 401
    assert _stored(nurture) == {}
