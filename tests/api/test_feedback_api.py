"""Provider webhooks through the real app, on SQLite and PostgreSQL. SNS certificates and
subscription confirmations are served by a local HTTP server the test starts; a bad
signature is refused with 401 and changes nothing; a malformed body is kept."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, insert, select
from starlette.testclient import TestClient
from tests.conftest import make_settings

from nurture.api.app import create_app
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.messages.feedback_ses import canonical
from nurture.messages.providers import FeedbackConfig
from nurture.store import Database
from nurture.store import tables as t

BASE = "https://n.example.com"
EMAIL, PHONE = "ann@example.com", "+14155550123"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses"
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def _self_signed() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns test")])
    clock = SimulatedClock()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(clock.now())
        .not_valid_after(clock.now().replace(year=2100))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


SNS_KEY, SNS_PEM = _self_signed()


class FakeSns:
    """A local stand-in for SNS's certificate host and subscription-confirmation URL."""

    def __init__(self) -> None:
        self.confirmed: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/confirm"):
                    owner.confirmed.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                else:
                    body = SNS_PEM
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll: shutdown() waits for it (the default 0.5 s, for every test).
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def sign(self, message: dict[str, Any], version: str = "2") -> bytes:
        signed = {**message, "SignatureVersion": version, "SigningCertURL": f"{self.url}/c.pem"}
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = SNS_KEY.sign(canonical(signed), padding.PKCS1v15(), algorithm)
        return orjson.dumps({**signed, "Signature": base64.b64encode(signature).decode()})


@pytest.fixture
def fake_sns() -> Iterator[FakeSns]:
    server = FakeSns()
    yield server
    server.server.shutdown()


@pytest.fixture
def n(
    db: Database, clock: SimulatedClock, fake_sns: FakeSns, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Nurture]:
    monkeypatch.setenv("TEST_PM_USER", "postmark")
    monkeypatch.setenv("TEST_PM_PASSWORD", "pw")
    monkeypatch.setenv("TEST_TWILIO_TOKEN", "twilio-token")
    config = FeedbackConfig(
        sns_topic_arns=[TOPIC],
        sns_trusted_cert_prefixes=[fake_sns.url + "/"],
        sendgrid_public_key=SG_PUBLIC,
        postmark_user_env="TEST_PM_USER",
        postmark_password_env="TEST_PM_PASSWORD",
        twilio_auth_token_env="TEST_TWILIO_TOKEN",
    )
    instance = Nurture(
        make_settings(str(db.url), public_url=BASE, feedback=config), clock=clock, db=db
    )
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def web(n: Nurture) -> Iterator[TestClient]:
    with TestClient(create_app(n, manage_lifecycle=False), base_url=BASE) as c:
        yield c


@pytest.fixture
def sent(n: Nurture) -> int:
    """A sent email (provider id ses-1) to a contact with an email and a phone."""
    n.ingest([{"type": "identify", "userId": "ann", "traits": {"email": EMAIL, "phone": PHONE}}])
    now = n.clock.now()
    with n.db.write() as conn:
        contact = conn.execute(select(t.contacts.c.id)).scalar_one()
        return int(
            conn.execute(
                insert(t.outbox)
                .values(
                    idempotency_key="k1",
                    contact_id=contact,
                    channel="email",
                    kind="marketing",
                    payload={},
                    status="sent",
                    created_at=now,
                    send_after=now,
                    provider="ses",
                    provider_id="ses-1",
                    address=EMAIL,
                )
                .returning(t.outbox.c.id)
            ).scalar_one()
        )


def _count(n: Nurture, table: Any) -> int:
    with n.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _status(n: Nurture, outbox_id: int) -> str:
    with n.db.read() as conn:
        return str(
            conn.execute(select(t.outbox.c.status).where(t.outbox.c.id == outbox_id)).scalar()
        )


def _bounce(message_id: str = "sns-1", feedback_id: str | None = None) -> dict[str, Any]:
    ses = {
        "notificationType": "Bounce",
        "mail": {"messageId": "ses-1", "timestamp": "2026-03-01T11:59:00.000Z"},
        "bounce": {
            **({"feedbackId": feedback_id} if feedback_id else {}),
            "bounceType": "Permanent",
            "timestamp": "2026-03-01T12:00:00.000Z",
            "bouncedRecipients": [{"emailAddress": EMAIL, "diagnosticCode": "550 unknown user"}],
        },
    }
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": orjson.dumps(ses).decode(),
        "Timestamp": "2026-03-01T12:00:01.000Z",
    }


def test_ses_subscription_is_confirmed(n: Nurture, web: TestClient, fake_sns: FakeSns) -> None:
    # Given SNS's subscription confirmation
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m0",
        "Token": "tok",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": f"{fake_sns.url}/confirm?Token=tok",
        "Timestamp": "2026-03-01T12:00:00.000Z",
    }
    # When it is posted, signed (version 1)
    response = web.post("/hooks/ses", content=fake_sns.sign(message, "1"))
    # Then the SubscribeURL was fetched
    assert response.status_code == 200
    assert fake_sns.confirmed == ["/confirm?Token=tok"]


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_through_sns(
    n: Nurture, web: TestClient, fake_sns: FakeSns, sent: int, version: str
) -> None:
    # When a signed SES bounce arrives, twice (SNS retries)
    body = fake_sns.sign(_bounce(), version)
    first = web.post("/hooks/ses", content=body)
    second = web.post("/hooks/ses", content=body)
    # Then it is applied once: bounced, suppressed, one event
    assert first.json() == {"received": 1, "stored": 1, "duplicates": 0, "applied": 1, "pending": 0}
    assert second.json()["duplicates"] == 1
    assert _status(n, sent) == "bounced"
    assert n.suppressions.lookup("email", EMAIL) is not None
    assert _count(n, t.events) == 2  # the identify, and email.bounced


def test_one_ses_bounce_through_two_sns_subscriptions_counts_once(
    n: Nurture, web: TestClient, fake_sns: FakeSns, sent: int
) -> None:
    # Given the same SES bounce (one feedbackId) delivered as two SNS messages, as happens
    # with identity notifications and a configuration set's event destination both on
    first = _bounce("sns-a", feedback_id="0100018-feedback-1")
    second = _bounce("sns-b", feedback_id="0100018-feedback-1")
    # When both arrive
    answers = [web.post("/hooks/ses", content=fake_sns.sign(m)).json() for m in (first, second)]
    # Then the bounce is stored and applied once: one email.bounced event
    assert [a["stored"] for a in answers] == [1, 0]
    assert answers[1]["duplicates"] == 1
    assert _status(n, sent) == "bounced"
    assert _count(n, t.events) == 2  # the identify, and one email.bounced


def test_a_bad_sns_signature_changes_nothing(
    n: Nurture, web: TestClient, fake_sns: FakeSns, sent: int
) -> None:
    # Given a signed bounce whose Message was altered, and one naming a foreign certificate
    altered = orjson.loads(fake_sns.sign(_bounce()))
    altered["Message"] = altered["Message"].replace("Permanent", "Transient")
    foreign = orjson.loads(fake_sns.sign(_bounce()))
    foreign["SigningCertURL"] = "https://evil.example.com/c.pem"
    # When posted
    for body in (altered, foreign):
        response = web.post("/hooks/ses", content=orjson.dumps(body))
        # Then 401, and nothing is stored or changed
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "bad_signature"
    assert _count(n, t.message_feedback) == 0 and _count(n, t.rejected_events) == 0
    assert _status(n, sent) == "sent"


def test_a_malformed_but_signed_body_is_kept(
    n: Nurture, web: TestClient, fake_sns: FakeSns
) -> None:
    # Given a genuine SNS notification whose SES event lacks its recipients
    message = _bounce()
    ses = orjson.loads(message["Message"])
    del ses["bounce"]["bouncedRecipients"]
    message["Message"] = orjson.dumps(ses).decode()
    # When posted
    response = web.post("/hooks/ses", content=fake_sns.sign(message))
    # Then 400 names the field, and the body is kept for inspection
    assert response.status_code == 400
    assert response.json()["error"]["path"] == "Message.bounce.bouncedRecipients"
    (kept,) = n.rejected.page()
    assert kept.source == "hook:/hooks/ses" and kept.code == "invalid_feedback"
    assert kept.raw is not None and "bounceType" in kept.raw


def test_sendgrid_events(n: Nurture, web: TestClient, sent: int) -> None:
    # Given SendGrid events, one tagged with our outbox id
    events = [
        {"event": "delivered", "sg_event_id": "e1", "timestamp": 1772366400,
         "outbox_id": str(sent)},
        {"event": "spamreport", "sg_event_id": "e2", "timestamp": 1772366401, "email": EMAIL,
         "outbox_id": str(sent)},
    ]  # fmt: skip
    body = orjson.dumps(events)
    signature = base64.b64encode(SG_KEY.sign(b"1772366402" + body, ec.ECDSA(hashes.SHA256())))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": signature.decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": "1772366402",
    }
    # When posted with a wrong signature, then the right one
    stale = {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": "1"}
    wrong = web.post("/hooks/sendgrid", content=body, headers=stale)
    right = web.post("/hooks/sendgrid", content=body, headers=headers)
    # Then only the signed one counts: complained (after delivered), suppressed, consent denied
    assert wrong.status_code == 401 and right.status_code == 200
    assert right.json()["applied"] == 2
    assert _status(n, sent) == "complained"
    entry = n.suppressions.lookup("email", EMAIL)
    assert entry is not None and entry.reason == "complained"
    with n.db.read() as conn:
        contact = conn.execute(select(t.outbox.c.contact_id)).scalar_one()
    assert n.consent.states(contact)[("email", "*")] == "denied"


def test_postmark_needs_its_basic_auth(n: Nurture, web: TestClient, sent: int) -> None:
    record = {
        "RecordType": "Delivery",
        "MessageID": "ses-1",
        "Recipient": EMAIL,
        "DeliveredAt": "2026-03-01T12:00:00Z",
    }
    # When posted without and with the configured credentials
    anonymous = web.post("/hooks/postmark", json=record)
    wrong = web.post("/hooks/postmark", json=record, auth=("postmark", "nope"))
    right = web.post("/hooks/postmark", json=record, auth=("postmark", "pw"))
    # Then only the authenticated one is applied
    assert (anonymous.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert _status(n, sent) == "delivered"


def _twilio_signature(url: str, params: dict[str, str]) -> str:
    data = url + "".join(k + v for k, v in sorted(params.items()))
    digest = hmac.new(b"twilio-token", data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def test_twilio_stop_and_start_replies(n: Nurture, web: TestClient, sent: int) -> None:
    # Given an inbound STOP, signed for the public URL
    stop = {"MessageSid": "SM1", "From": PHONE, "To": "+15005550006", "Body": "STOP"}
    url = f"{BASE}/hooks/twilio/inbound"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    # When posted unsigned, then signed
    unsigned = web.post("/hooks/twilio/inbound", content=urlencode(stop), headers=headers)
    signed = web.post(
        "/hooks/twilio/inbound",
        content=urlencode(stop),
        headers={**headers, "X-Twilio-Signature": _twilio_signature(url, stop)},
    )
    # Then the unsigned one is refused; the signed one suppresses the number and gets TwiML
    assert unsigned.status_code == 401
    assert signed.status_code == 200 and signed.text.endswith("<Response></Response>")
    assert signed.headers["content-type"].startswith("text/xml")
    entry = n.suppressions.lookup("phone", PHONE)
    assert entry is not None and entry.reason == "stop"
    # When START follows
    start = {**stop, "MessageSid": "SM2", "Body": "start"}
    web.post(
        "/hooks/twilio/inbound",
        content=urlencode(start),
        headers={**headers, "X-Twilio-Signature": _twilio_signature(url, start)},
    )
    # Then the number may receive messages again
    assert n.suppressions.lookup("phone", PHONE) is None


def test_twilio_status_callback(n: Nurture, web: TestClient) -> None:
    # Given an SMS sent through Twilio
    n.ingest([{"type": "identify", "userId": "bo", "traits": {"phone": PHONE}}])
    now = n.clock.now()
    with n.db.write() as conn:
        contact = conn.execute(select(t.contacts.c.id)).scalar_one()
        message = conn.execute(
            insert(t.outbox)
            .values(idempotency_key="s1", contact_id=contact, channel="sms", kind="marketing",
                    payload={}, status="sent", created_at=now, send_after=now,
                    provider="twilio", provider_id="SM9", address=PHONE)
            .returning(t.outbox.c.id)
        ).scalar_one()  # fmt: skip
    params = {"MessageSid": "SM9", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    url = f"{BASE}/hooks/twilio/status"
    # When Twilio reports it undelivered
    response = web.post(
        "/hooks/twilio/status",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": _twilio_signature(url, params),
        },
    )
    # Then the message failed, with Twilio's error code as the reason
    assert response.status_code == 200
    assert _status(n, message) == "failed"
