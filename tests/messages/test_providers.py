"""Provider webhook verification and parsing, against the providers' documented shapes:
SNS signatures (versions 1 and 2) with a self-signed certificate, SES notifications,
SendGrid's ECDSA signature and events, Postmark records and Twilio's HMAC-SHA1."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from nurture.messages.feedback_ses import SnsVerifier, canonical, parse_ses
from nurture.messages.providers import (
    BadPayload,
    BadSignature,
    FeedbackConfig,
    parse_postmark,
    parse_sendgrid,
    parse_twilio_inbound,
    parse_twilio_status,
    verify_sendgrid,
    verify_twilio,
)

CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"


def make_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


KEY, PEM = make_cert()


def sns(
    message: dict[str, Any], version: str = "1", key: rsa.RSAPrivateKey = KEY
) -> dict[str, Any]:
    """Sign an SNS message as SNS does."""
    signed = {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL}
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical(signed), padding.PKCS1v15(), algorithm)
    return {**signed, "Signature": base64.b64encode(signature).decode()}


def notification(body: dict[str, Any], message_id: str = "sns-1") -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": orjson.dumps(body).decode(),
        "Timestamp": "2026-03-01T12:00:00.000Z",
    }


def verifier(**config: Any) -> SnsVerifier:
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return PEM

    return SnsVerifier(FeedbackConfig(**{"sns_topic_arns": [TOPIC], **config}), fetch)


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signatures_verify(version: str) -> None:
    # Given a notification signed with SHA1 (v1) or SHA256 (v2), with a Subject
    message = sns({**notification({"x": 1}), "Subject": "Amazon SES Email Event"}, version)
    # Then it verifies
    verifier(sns_topic_arns=[TOPIC]).verify(message)


def test_a_changed_sns_message_does_not_verify() -> None:
    # Given a signed notification whose Message was changed afterwards
    message = {**sns(notification({"x": 1})), "Message": '{"x": 2}'}
    # Then it is refused
    with pytest.raises(BadSignature, match="does not match"):
        verifier().verify(message)


def test_sns_certificates_come_only_from_sns() -> None:
    # Given messages naming a certificate elsewhere, over http, or a foreign topic
    elsewhere = {**sns(notification({})), "SigningCertURL": "https://evil.example.com/x.pem"}
    plain = {**sns(notification({})), "SigningCertURL": CERT_URL.replace("https", "http")}
    # Then each is refused before any certificate is fetched
    for message in (elsewhere, plain):
        with pytest.raises(BadSignature, match="not an SNS URL"):
            verifier().verify(message)
    with pytest.raises(BadSignature, match="not in sns_topic_arns"):
        verifier(sns_topic_arns=["arn:other"]).verify(sns(notification({})))
    with pytest.raises(BadSignature, match="sns_topic_arns"):
        verifier(sns_topic_arns=[]).verify(sns(notification({})))
    # And a configured prefix is trusted
    assert verifier(sns_trusted_cert_prefixes=["http://127.0.0.1:9/"]).trusted(
        "http://127.0.0.1:9/cert.pem"
    )


def test_a_message_signed_by_another_key_does_not_verify() -> None:
    other, _ = make_cert()
    with pytest.raises(BadSignature):
        verifier().verify(sns(notification({}), key=other))


MAIL = {"messageId": "0102-ses-id", "timestamp": "2026-03-01T11:59:00.000Z", "tags": {}}


def test_ses_bounces_by_type_and_recipient() -> None:
    # Given an SES bounce notification with two recipients (Permanent) and a Transient one
    permanent = {
        "notificationType": "Bounce",
        "mail": MAIL,
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "timestamp": "2026-03-01T12:00:01.000Z",
            "feedbackId": "f1",
            "bouncedRecipients": [
                {"emailAddress": "a@example.com", "diagnosticCode": "smtp; 550 5.1.1 unknown"},
                {"emailAddress": "b@example.com"},
            ],
        },
    }
    transient = {**permanent, "bounce": {**permanent["bounce"], "bounceType": "Transient"}}
    # When parsed
    hard = parse_ses(permanent, "sns-1")
    soft = parse_ses(transient, "sns-2")
    # Then each recipient is one item, keyed by SES's feedbackId (the same bounce may come
    # through two SNS subscriptions), with the SES message id
    assert [(i.event_key, i.address, i.bounce_type) for i in hard] == [
        ("feedback:f1:0", "a@example.com", "hard"),
        ("feedback:f1:1", "b@example.com", "hard"),
    ]
    assert hard[0].provider_id == "0102-ses-id" and hard[0].reason == "smtp; 550 5.1.1 unknown"
    assert {i.bounce_type for i in soft} == {"soft"}


def test_ses_complaints_deliveries_and_published_events() -> None:
    complaint = {
        "notificationType": "Complaint",
        "mail": MAIL,
        "complaint": {
            "complainedRecipients": [{"emailAddress": "a@example.com"}],
            "timestamp": "2026-03-01T12:00:00.000Z",
            "complaintFeedbackType": "abuse",
        },
    }
    delivery = {
        "notificationType": "Delivery",
        "mail": MAIL,
        "delivery": {"timestamp": "2026-03-01T12:00:00.000Z", "smtpResponse": "250 ok"},
    }
    click = {
        "eventType": "Click",
        "mail": {**MAIL, "tags": {"outbox_id": ["42"]}},
        "click": {
            "ipAddress": "192.0.2.1",
            "link": "https://shop.example.com/",
            "timestamp": "2026-03-01T12:05:00.000Z",
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120",
        },
    }
    (c,) = parse_ses(complaint, "s1")
    (d,) = parse_ses(delivery, "s2")
    (k,) = parse_ses(click, "s3")
    assert (c.type, c.address, c.reason) == ("complained", "a@example.com", "abuse")
    assert (d.type, d.reason) == ("delivered", "250 ok")
    assert (k.type, k.url, k.outbox_id, k.machine) == ("clicked", click["click"]["link"], 42, False)
    assert k.occurred_at == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    assert parse_ses({"eventType": "Send", "mail": MAIL}, "s4") == []


def test_a_malformed_ses_notification_names_the_field() -> None:
    with pytest.raises(BadPayload) as caught:
        parse_ses({"notificationType": "Bounce", "mail": MAIL, "bounce": {}}, "s")
    assert caught.value.path == "Message.bounce.bouncedRecipients"


# -- SendGrid ----------------------------------------------------------------------------
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def sendgrid_signature(timestamp: str, body: bytes) -> str:
    signature = SG_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def test_sendgrid_signatures() -> None:
    body = b'[{"event":"delivered"}]'
    verify_sendgrid(SG_PUBLIC, sendgrid_signature("1700000000", body), "1700000000", body)
    with pytest.raises(BadSignature):
        verify_sendgrid(SG_PUBLIC, sendgrid_signature("1700000000", body), "1700000001", body)
    with pytest.raises(BadSignature):
        verify_sendgrid(SG_PUBLIC, "bm90IGEgc2lnbmF0dXJl", "1700000000", body)


def test_sendgrid_events() -> None:
    events = [
        {
            "email": "a@example.com",
            "timestamp": 1772366400,
            "event": "bounce",
            "type": "blocked",
            "reason": "450 try later",
            "sg_event_id": "e1",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "outbox_id": "42",
        },
        {"event": "processed", "sg_event_id": "e2", "timestamp": 1772366400},
        {
            "event": "open",
            "sg_event_id": "e3",
            "timestamp": 1772366400,
            "sg_machine_open": True,
            "useragent": "Mozilla/5.0",
            "ip": "17.0.0.1",
        },
    ]
    bounce, opened = parse_sendgrid(events)
    assert (bounce.type, bounce.bounce_type, bounce.provider_id) == (
        "bounced",
        "soft",
        "14c5d75ce93",
    )
    assert bounce.outbox_id == 42 and bounce.address == "a@example.com"
    assert (opened.type, opened.machine) == ("opened", True)
    with pytest.raises(BadPayload) as caught:
        parse_sendgrid([{"event": "delivered", "timestamp": 1}])
    assert caught.value.path == "[0].sg_event_id"


# -- Postmark and Twilio -----------------------------------------------------------------
def test_postmark_records() -> None:
    bounce = {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "john@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "Description": "The server was unable to deliver your message",
        "Metadata": {"outbox_id": "7"},
    }
    (item,) = parse_postmark(bounce)
    assert (item.type, item.bounce_type, item.outbox_id) == ("bounced", "hard", 7)
    assert item.event_key == "Bounce:4323372036854775807"
    delivery = {
        "RecordType": "Delivery",
        "MessageID": "883953f4",
        "Recipient": "john@example.com",
        "DeliveredAt": "2019-11-05T16:33:54.9070259Z",
    }
    (first,) = parse_postmark(delivery)
    (again,) = parse_postmark(dict(delivery))
    assert first.type == "delivered" and first.event_key == again.event_key
    with pytest.raises(BadPayload):
        parse_postmark({"RecordType": "Delivery", "MessageID": "x", "DeliveredAt": "soon"})


def test_twilio_signature_known_vector() -> None:
    # Given the example from Twilio's own validation tests
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    # Then the documented signature verifies, and another does not
    verify_twilio("12345", url, list(params.items()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    with pytest.raises(BadSignature):
        verify_twilio("12345", url + "&x=1", list(params.items()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_twilio_status_and_replies() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    (failed,) = parse_twilio_status(
        {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}, now
    )
    assert (failed.type, failed.provider_id, failed.channel) == ("failed", "SM1", "sms")
    assert parse_twilio_status({"MessageSid": "SM1", "MessageStatus": "sent"}, now) == []
    (reply,) = parse_twilio_inbound({"MessageSid": "SM2", "From": "+1415", "Body": "STOP"}, now)
    assert (reply.type, reply.text, reply.address) == ("replied", "STOP", "+1415")
