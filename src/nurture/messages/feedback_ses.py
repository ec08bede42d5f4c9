"""Amazon SES feedback through SNS: the SNS message signature, subscription confirmation,
and SES notifications (Bounce, Complaint, Delivery) and event publishing (Open, Click,
DeliveryDelay, Reject, ...) turned into FeedbackItems.

SNS signs a canonical string of the message's fields with the private key of the X.509
certificate at `SigningCertURL` (RSA PKCS#1 v1.5; SHA1 for SignatureVersion 1, SHA256 for
2). The certificate is only fetched from https://sns.<region>.amazonaws.com/ (or a prefix
the operator trusts), so a forged message cannot bring its own certificate.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nurture.messages.providers import (
    BadPayload,
    BadSignature,
    FeedbackConfig,
    FeedbackItem,
    FeedbackType,
    field,
    optional,
    parse_time,
)
from nurture.messages.tracking import is_machine

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]


def canonical(message: dict[str, Any]) -> bytes:
    """The string SNS signs: each signed field present, as `name\\nvalue\\n`, in order."""
    names = _SIGNED_FIELDS.get(str(message.get("Type")))
    if names is None:
        raise BadPayload(f"unknown SNS message type {message.get('Type')!r}", path="Type")
    out = []
    for name in names:
        value = message.get(name)
        if value is None:
            if name == "Subject":
                continue  # optional, and then not signed
            raise BadPayload(f"the SNS message has no {name}", path=name)
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


class SnsVerifier:
    """Verifies SNS message signatures; certificates are fetched once per URL."""

    def __init__(self, config: FeedbackConfig, fetch: Callable[[str], bytes]) -> None:
        self.config = config
        self.fetch = fetch
        self._certs: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def trusted(self, url: str) -> bool:
        """Whether a certificate (or subscription) URL is one SNS would use."""
        if any(url.startswith(prefix) for prefix in self.config.sns_trusted_cert_prefixes):
            return True
        parts = urlsplit(url)
        return parts.scheme == "https" and bool(_SNS_HOST.match(parts.hostname or ""))

    def verify(self, message: dict[str, Any]) -> None:
        """Raise BadSignature unless SNS signed this message (for an allowed topic)."""
        version = str(message.get("SignatureVersion", ""))
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise BadSignature(f"unsupported SNS SignatureVersion {version!r}")
        url = message.get("SigningCertURL")
        if not isinstance(url, str) or not self.trusted(url):
            raise BadSignature(f"the signing certificate URL {url!r} is not an SNS URL")
        # Anyone can create an SNS topic and sign with AWS's key: only our topics count.
        arns = self.config.sns_topic_arns
        if not arns:
            raise BadSignature("list the SES feedback topics in feedback.sns_topic_arns")
        if message.get("TopicArn") not in arns:
            raise BadSignature(f"topic {message.get('TopicArn')!r} is not in sns_topic_arns")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise BadSignature("the SNS Signature is not base64") from None
        key = self._key(url)
        try:
            key.verify(signature, canonical(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise BadSignature("the SNS signature does not match the message") from None

    def _key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._certs.get(url)
        if cached is not None:
            return cached
        try:
            cert = x509.load_pem_x509_certificate(self.fetch(url))
        except Exception as e:  # unreachable, not PEM: the message cannot be verified
            raise BadSignature(f"cannot load the SNS certificate {url}: {e}") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadSignature("the SNS certificate does not hold an RSA key")
        with self._lock:
            self._certs[url] = key
        return key


_SES_TYPES: dict[str, FeedbackType] = {
    "Delivery": "delivered",
    "Bounce": "bounced",
    "Complaint": "complained",
    "Open": "opened",
    "Click": "clicked",
    "DeliveryDelay": "deferred",
    "Reject": "failed",
    "Rendering Failure": "failed",
    "RenderingFailure": "failed",
}


def _outbox_tag(mail: dict[str, Any]) -> int | None:
    # Event publishing echoes message tags as lists: {"outbox_id": ["42"]}.
    tags = mail.get("tags")
    value = tags.get("outbox_id") if isinstance(tags, dict) else None
    if isinstance(value, list) and value:
        value = value[0]
    return int(value) if isinstance(value, str) and value.isdigit() else None


def parse_ses(notification: Any, sns_id: str) -> list[FeedbackItem]:
    """The FeedbackItems of one SES notification (the SNS `Message`, decoded)."""
    if not isinstance(notification, dict):
        raise BadPayload("the SNS Message is not a JSON object", path="Message")
    kind = notification.get("notificationType") or notification.get("eventType")
    if kind not in _SES_TYPES:
        return []  # Send, Subscription, AmazonSnsSubscriptionSucceeded, ...
    mail = field(notification, "mail", dict, "Message")
    common: dict[str, Any] = {
        "provider_id": field(mail, "messageId", str, "Message.mail"),
        "outbox_id": _outbox_tag(mail),
        "raw": notification,
    }
    type_ = _SES_TYPES[kind]
    detail_name = {"DeliveryDelay": "deliveryDelay", "Rendering Failure": "failure"}.get(
        kind, kind[0].lower() + kind[1:]
    )
    detail = optional(notification, detail_name, dict, "Message") or {}
    at = parse_time(detail.get("timestamp") or mail.get("timestamp"), f"Message.{detail_name}")
    path = f"Message.{detail_name}"
    # SES's own id of a bounce or complaint: the same one can reach us through two SNS
    # subscriptions (identity notifications and a configuration set), as two SNS messages.
    report = detail.get("feedbackId") if isinstance(detail.get("feedbackId"), str) else None
    key = f"feedback:{report}" if report else sns_id
    if kind == "Bounce":
        hard = detail.get("bounceType") == "Permanent"
        recipients = field(detail, "bouncedRecipients", list, path)
        return [
            FeedbackItem(
                type_,
                f"{key}:{i}",
                at,
                address=r.get("emailAddress"),
                bounce_type="hard" if hard else "soft",
                reason=r.get("diagnosticCode") or detail.get("bounceSubType"),
                **common,
            )
            for i, r in enumerate(recipients)
            if isinstance(r, dict)
        ]
    if kind == "Complaint":
        recipients = field(detail, "complainedRecipients", list, path)
        return [
            FeedbackItem(
                type_,
                f"{key}:{i}",
                at,
                address=r.get("emailAddress"),
                reason=detail.get("complaintFeedbackType"),
                **common,
            )
            for i, r in enumerate(recipients)
            if isinstance(r, dict)
        ]
    if kind in ("Open", "Click"):
        agent = detail.get("userAgent")
        return [
            FeedbackItem(
                type_,
                sns_id,
                at,
                url=detail.get("link"),
                machine=is_machine(agent),
                context={"ip": detail.get("ipAddress"), "userAgent": agent},
                **common,
            )
        ]
    reason = detail.get("smtpResponse") or detail.get("reason") or detail.get("errorMessage")
    return [FeedbackItem(type_, sns_id, at, reason=reason, **common)]
