"""Issue 5's "done when", end to end through the running parts: a journey's email goes
through the SMTP adapter to a real SMTP server with correct headers, both parts and the RFC
8058 headers; an unsubscribe, a bounce and an SMS STOP, each arriving through its real HTTP
route, stop the next marketing message and not the next billing alert."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tests.channels import servers
from tests.channels.servers import SmtpHandler
from tests.conftest import make_settings

from nurture.api.app import create_app
from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

BASE = "https://nurture.example.com"
START = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)  # a Tuesday afternoon: no quiet hours
WELCOME = {
    "traits": ["first_name"],
    "email": {
        "subject": "Grüße, {{ contact.first_name }} — willkommen",
        "preheader": "Your account is ready",
        "html": (
            "<html><head><style>p { color: #333 }</style></head><body>"
            "<p>Hallo {{ contact.first_name }},</p>"
            '<p><a href="https://acme.test/start?utm_campaign=welcome">Start</a></p>'
            "</body></html>"
        ),
    },
    "sms": {"body": "Acme: new features are live"},
}
BILLING = {
    "email": {"subject": "Your invoice", "html": "<p>Your card was charged.</p>"},
    "sms": {"body": "Acme: your card was charged"},
}
JOURNEY = {
    "key": "welcome",
    "trigger": {"event": "Signed Up"},
    "steps": [
        {"id": "hello", "type": "send", "channel": "email", "template": "welcome",
         "topic": "news"},
    ],
}  # fmt: skip


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpHandler, int]]:
    with servers.smtp_server() as server:
        yield server


@pytest.fixture
def app(
    db: Database, smtp: tuple[SmtpHandler, int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Nurture]:
    monkeypatch.setenv("TEST_PM_USER", "postmark")
    monkeypatch.setenv("TEST_PM_PASSWORD", "pw")
    monkeypatch.setenv("TEST_TWILIO_TOKEN", "twilio-token")
    settings = make_settings(
        str(db.url),
        public_url=BASE,
        channels={
            "email": {"provider": "smtp", "host": "127.0.0.1", "port": smtp[1],
                      "starttls": False, "from": "Acme Café <hi@acme.test>"},
            "sms": {"provider": "memory"},
        },
        feedback={
            "postmark_user_env": "TEST_PM_USER",
            "postmark_password_env": "TEST_PM_PASSWORD",
            "twilio_auth_token_env": "TEST_TWILIO_TOKEN",
        },
    )  # fmt: skip
    with Nurture(settings, clock=SimulatedClock(START), db=db) as nurture:
        nurture.templates.put("welcome", WELCOME)
        nurture.templates.put("billing", BILLING)
        yield nurture


@pytest.fixture
def web(app: Nurture) -> Iterator[TestClient]:
    with TestClient(create_app(app, manage_lifecycle=False), base_url=BASE) as client:
        yield client


def contact(app: Nurture) -> int:
    app.ingest(
        [
            {
                "type": "identify",
                "userId": "zoe",
                "traits": {
                    "email": "zoe@example.com",
                    "phone": "+14155550123",
                    "first_name": "Zoë",
                    "last_name": "Müller",
                    "country": "US",
                },
            }
        ]
    )
    with app.db.read() as conn:
        return int(conn.execute(select(t.contacts.c.id)).scalar_one())


def signed_up(app: Nurture) -> None:
    app.ingest([{"type": "track", "userId": "zoe", "event": "Signed Up"}])
    app.journey_runtime.process_inbox()
    app.journey_runtime.run_due()


def send(app: Nurture, contact_id: int, channel: str, template: str, kind: str) -> int:
    """Queue a message as a journey step would, dispatch, and return its outbox id."""
    now = app.clock.now()
    key = f"test:{uuid.uuid4()}"
    with app.db.write() as conn:
        conn.execute(
            t.outbox.insert().values(
                idempotency_key=key, contact_id=contact_id, channel=channel,
                template=template, kind=kind, topic="news" if kind == "marketing" else None,
                payload={}, status="queued", created_at=now, send_after=now,
            )
        )  # fmt: skip
    app.dispatcher.run_due()
    with app.db.read() as conn:
        return int(
            conn.execute(
                select(t.outbox.c.id).where(t.outbox.c.idempotency_key == key)
            ).scalar_one()
        )


def outcome(app: Nurture, message_id: int) -> tuple[str, str | None]:
    with app.db.read() as conn:
        row = conn.execute(
            select(t.outbox.c.status, t.outbox.c.rule).where(t.outbox.c.id == message_id)
        ).one()
    return row.status, row.rule


def parsed(handler: SmtpHandler, index: int = -1) -> EmailMessage:
    return cast(
        EmailMessage, message_from_bytes(handler.received[index].data, policy=policy.default)
    )


def test_a_journey_email_reaches_a_real_smtp_server_complete(
    app: Nurture, smtp: tuple[SmtpHandler, int]
) -> None:
    handler = smtp[0]
    # Given a published welcome journey and a contact with a non-ASCII name
    app.journeys.save(JOURNEY, publish=True)
    contact(app)
    # When she signs up and the outbox is dispatched
    signed_up(app)
    report = app.dispatcher.run_due()
    # Then the SMTP server received one message, addressed and encoded correctly
    assert report.sent == 1 and len(handler.received) == 1
    assert handler.received[0].recipients == ["zoe@example.com"]
    mail = parsed(handler)
    assert mail["Subject"] == "Grüße, Zoë — willkommen"
    assert mail["From"].addresses[0].display_name == "Acme Café"
    assert mail["From"].addresses[0].addr_spec == "hi@acme.test"
    assert mail["To"].addresses[0].display_name == "Zoë Müller"
    assert mail["Message-ID"] and mail["Date"]
    # With both parts: plain text and HTML (CSS inlined, links tracked, the pixel)
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    assert "Hallo Zoë" in text.get_content()
    body = html.get_content()
    assert 'style="color: #333' in body and "Your account is ready" in body
    assert f"{BASE}/t/c/" in body and f"{BASE}/t/o/" in body
    # And the RFC 8058 one-click unsubscribe headers
    assert mail["List-Unsubscribe"].startswith(f"<{BASE}/t/u/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # And the outbox knows where it went
    with app.db.read() as conn:
        row = conn.execute(select(t.outbox)).one()
    assert row.status == "sent" and row.provider == "smtp" and row.address == "zoe@example.com"


def _unsubscribe(app: Nurture, web: TestClient, handler: SmtpHandler) -> None:
    # The mail client POSTs the List-Unsubscribe URL (RFC 8058 one-click)
    url = parsed(handler)["List-Unsubscribe"].strip("<>").split(">")[0]
    answer = web.post(
        urlsplit(url).path,
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200


def _bounce(app: Nurture, web: TestClient, handler: SmtpHandler) -> None:
    record = {
        "RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce",
        "MessageID": "pm-1", "Email": "zoe@example.com", "Recipient": "zoe@example.com",
        "BouncedAt": "2026-03-03T14:00:05Z", "Description": "The server was unable to deliver",
    }  # fmt: skip
    answer = web.post("/hooks/postmark", json=record, auth=("postmark", "pw"))
    assert answer.status_code == 200


def _stop(app: Nurture, web: TestClient, handler: SmtpHandler) -> None:
    params = {"MessageSid": "SM1", "From": "+14155550123", "To": "+15005550006", "Body": "Stop"}
    data = f"{BASE}/hooks/twilio/inbound" + "".join(k + v for k, v in sorted(params.items()))
    signature = base64.b64encode(
        hmac.new(b"twilio-token", data.encode(), hashlib.sha1).digest()
    ).decode()
    answer = web.post(
        "/hooks/twilio/inbound",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )
    assert answer.status_code == 200


# What each stop does to the next messages: (marketing email, marketing SMS, billing email,
# billing SMS). A billing alert always reaches the person on a channel that still works;
# a hard bounce stops even billing email to that address (it cannot receive), and after
# STOP no text goes to the number (carriers' rule, docs/policy.md).
CASES: dict[str, tuple[Any, tuple[str, str, str, str]]] = {
    "unsubscribe": (_unsubscribe, ("consent", "sent", "sent", "sent")),
    "bounce": (_bounce, ("suppressed", "sent", "suppressed", "sent")),
    "sms_stop": (_stop, ("sent", "suppressed", "sent", "suppressed")),
}


@pytest.mark.parametrize("stop", sorted(CASES))
def test_each_stop_ends_marketing_and_not_the_billing_alert(
    app: Nurture, web: TestClient, smtp: tuple[SmtpHandler, int], stop: str
) -> None:
    handler = smtp[0]
    act, expected = CASES[stop]
    # Given a contact who opted in to marketing texts and received a marketing email
    zoe = contact(app)
    app.consent.record(zoe, "sms", "*", "granted", source="checkout", ip="192.0.2.7")
    first = send(app, zoe, "email", "welcome", "marketing")
    assert outcome(app, first) == ("sent", None)
    # When the stop arrives through its HTTP route
    act(app, web, handler)
    # Then the next messages go or not, each skipped one naming its rule
    results = [
        send(app, zoe, "email", "welcome", "marketing"),
        send(app, zoe, "sms", "welcome", "marketing"),
        send(app, zoe, "email", "billing", "transactional"),
        send(app, zoe, "sms", "billing", "transactional"),
    ]
    seen = tuple("sent" if s == "sent" else r for s, r in (outcome(app, m) for m in results))
    assert seen == expected
    # And the SMS channel and the SMTP server got exactly the messages marked sent
    sms = app.channels["sms"]
    assert isinstance(sms, MemoryChannel)
    assert len(sms.sent) == sum(1 for i in (1, 3) if expected[i] == "sent")
    assert len(handler.received) == 1 + sum(1 for i in (0, 2) if expected[i] == "sent")
