"""Provider webhooks: how each provider proves a request is its own, and how its events
read as FeedbackItems. SendGrid (ECDSA), Postmark (HTTP basic auth, it signs nothing) and
Twilio (HMAC-SHA1) are here; SES through SNS is in feedback_ses.py.

Parsing raises BadPayload with the path of the bad field; verification raises
BadSignature. Neither touches the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field

from nurture.errors import NurtureError, ValidationError
from nurture.messages.tracking import is_machine

FeedbackType = Literal[
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "deferred",
    "unsubscribed",
    "failed",
    "replied",
]


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One provider event about one message (or, for an SMS reply, about a number).

    `event_key` is unique per provider event (its id, or a hash of what identifies it), so
    a webhook delivered twice is applied once. The message is found by `outbox_id` (our
    tags, echoed back) or by `provider_id` (the provider's message id).
    """

    type: FeedbackType
    event_key: str
    occurred_at: datetime
    channel: str = "email"
    provider_id: str | None = None
    outbox_id: int | None = None
    contact_id: int | None = None  # from our own signed links
    address: str | None = None  # the recipient as the provider names it
    bounce_type: Literal["hard", "soft"] | None = None
    reason: str | None = None
    url: str | None = None
    text: str | None = None  # an SMS reply's body
    topic: str | None = None  # what an unsubscribe is from (None: the message's topic)
    machine: bool = False  # an open or click by software (scanner, privacy proxy)
    context: dict[str, Any] | None = None  # ip and userAgent of the person's request
    raw: dict[str, Any] = dataclass_field(default_factory=dict)  # the provider's event, as received


class BadSignature(NurtureError):
    """The request is not provably from the provider: nothing of it is kept."""

    code = "bad_signature"
    http_status = 401


class BadPayload(ValidationError):
    """A verified request whose body does not have the provider's documented shape."""

    code = "invalid_feedback"


class FeedbackConfig(BaseModel):
    """The `feedback` setting: what proves a provider's webhook is genuine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sns_topic_arns: list[str] = Field(
        default_factory=list, description="Accept SES feedback only from these SNS topics"
    )
    sns_trusted_cert_prefixes: list[str] = Field(
        default_factory=list,
        description="Certificate URL prefixes trusted besides https://sns.<region>.amazonaws.com/",
    )
    sns_auto_confirm: bool = Field(True, description="Confirm SNS subscriptions by itself")
    sendgrid_public_key: str | None = Field(
        None, description="The Event Webhook verification key (base64 DER, as SendGrid shows it)"
    )
    sendgrid_max_age_seconds: int = Field(
        0, ge=0, description="Refuse signed SendGrid requests older than this (0: no limit)"
    )
    postmark_user_env: str | None = Field(
        None, description="Environment variable holding the Postmark webhook's basic-auth user"
    )
    postmark_password_env: str | None = Field(
        None, description="Environment variable holding the basic-auth password"
    )
    twilio_auth_token_env: str | None = Field(
        None, description="Environment variable holding the Twilio auth token"
    )


# -- reading JSON ------------------------------------------------------------------------
T = TypeVar("T")


def field(data: Any, name: str, kind: type[T], path: str) -> T:
    """`data[name]`, which must be a `kind`; BadPayload naming the path otherwise."""
    where = f"{path}.{name}" if path else name
    if not isinstance(data, dict) or name not in data:
        raise BadPayload(f"{name} is missing", path=where)
    value = data[name]
    if not isinstance(value, kind):
        raise BadPayload(f"{name} must be a {kind.__name__}", path=where)
    return value


def optional(data: dict[str, Any], name: str, kind: type[T], path: str) -> T | None:
    """`data[name]` if present and not null, which must then be a `kind`."""
    if data.get(name) is None:
        return None
    return field(data, name, kind, path)


def parse_time(value: Any, path: str) -> datetime:
    """An ISO 8601 time or unix seconds, as an aware UTC datetime."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise BadPayload(f"{value!r} is not a time", path=path)


def body_key(raw: Any) -> str:
    """An event key for providers that give their events no id: a hash of the event."""
    return hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _tag(value: Any) -> int | None:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return int(text) if text.isdigit() else None


def json_body(body: bytes) -> Any:
    """The decoded JSON body; BadPayload if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadPayload(f"the body is not JSON: {e}") from None


# -- SendGrid ----------------------------------------------------------------------------
def verify_sendgrid(public_key: str, signature: str, timestamp: str, body: bytes) -> None:
    """ECDSA (P-256, SHA-256) over timestamp + raw body, with the account's public key."""
    try:
        der = base64.b64decode("".join(public_key.split()), validate=True)
        key = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError) as e:
        raise BadSignature(f"the configured sendgrid_public_key is not a key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BadSignature("the configured sendgrid_public_key is not an elliptic-curve key")
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BadSignature("the SendGrid signature does not match the body") from None


_SENDGRID: dict[str, FeedbackType] = {
    "delivered": "delivered",
    "bounce": "bounced",
    "dropped": "failed",
    "deferred": "deferred",
    "spamreport": "complained",
    "open": "opened",
    "click": "clicked",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


def parse_sendgrid(events: Any) -> list[FeedbackItem]:
    """SendGrid's Event Webhook body: a JSON array of events."""
    if not isinstance(events, list):
        raise BadPayload("the body must be a JSON array of events")
    items = []
    for i, event in enumerate(events):
        path = f"[{i}]"
        name = field(event, "event", str, path)
        if name not in _SENDGRID:
            continue  # processed, group_resubscribe, ...
        message_id = optional(event, "sg_message_id", str, path)
        agent = event.get("useragent")
        items.append(
            FeedbackItem(
                _SENDGRID[name],
                field(event, "sg_event_id", str, path),
                parse_time(field(event, "timestamp", int, path), f"{path}.timestamp"),
                # The event's id is the X-Message-Id we got back, plus ".filter..." parts.
                provider_id=message_id.split(".", 1)[0] if message_id else None,
                outbox_id=_tag(event.get("outbox_id")),
                address=event.get("email"),
                # "blocked" is a refusal that may pass later; "bounce" is the address.
                bounce_type=("soft" if event.get("type") == "blocked" else "hard")
                if name == "bounce"
                else None,
                reason=event.get("reason") or event.get("response"),
                url=event.get("url"),
                machine=bool(event.get("sg_machine_open")) or is_machine(agent)
                if name in ("open", "click")
                else False,
                context={"ip": event.get("ip"), "userAgent": agent} if agent else None,
                raw=event,
            )
        )
    return items


# -- Postmark ----------------------------------------------------------------------------
def verify_basic(header: str | None, user: str | None, password: str | None) -> None:
    """HTTP basic auth with the configured credentials (Postmark signs nothing)."""
    if not user or not password:
        raise BadSignature("set feedback.postmark_user_env and postmark_password_env")
    scheme, _, value = (header or "").partition(" ")
    try:
        given = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        given = ""
    expected = f"{user}:{password}"
    if scheme.lower() != "basic" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise BadSignature("wrong or missing basic-auth credentials for this webhook")


_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


def parse_postmark(record: Any) -> list[FeedbackItem]:
    """One Postmark webhook body (one record)."""
    kind = field(record, "RecordType", str, "")
    metadata = record.get("Metadata") if isinstance(record.get("Metadata"), dict) else {}
    common: dict[str, Any] = {
        "provider_id": optional(record, "MessageID", str, ""),
        "outbox_id": _tag(metadata.get("outbox_id")),
        "address": record.get("Recipient") or record.get("Email"),
        "raw": record,
    }
    agent = record.get("UserAgent")
    geo = record.get("Geo") if isinstance(record.get("Geo"), dict) else {}
    person = {"ip": geo.get("IP"), "userAgent": agent} if agent else None
    match kind:
        case "Delivery":
            at = parse_time(record.get("DeliveredAt"), "DeliveredAt")
            return [
                FeedbackItem(
                    "delivered", body_key(record), at, reason=record.get("Details"), **common
                )
            ]
        case "Bounce" | "SpamComplaint":
            at = parse_time(record.get("BouncedAt"), "BouncedAt")
            key = f"{kind}:{field(record, 'ID', int, '')}"
            if kind == "SpamComplaint":
                return [FeedbackItem("complained", key, at, **common)]
            hard = record.get("Type") in _POSTMARK_HARD
            reason = record.get("Description") or record.get("Details")
            bounce: Literal["hard", "soft"] = "hard" if hard else "soft"
            return [FeedbackItem("bounced", key, at, bounce_type=bounce, reason=reason, **common)]
        case "Open" | "Click":
            at = parse_time(record.get("ReceivedAt"), "ReceivedAt")
            return [
                FeedbackItem(
                    "opened" if kind == "Open" else "clicked",
                    body_key(record),
                    at,
                    url=record.get("OriginalLink"),
                    machine=is_machine(agent),
                    context=person,
                    **common,
                )
            ]
        case "SubscriptionChange":
            # Bounces and complaints arrive as their own records; here only the person's
            # own unsubscribe (Postmark's link) counts.
            if record.get("SuppressSending") and record.get("SuppressionReason") in (
                "ManualSuppression",
                None,
            ):
                at = parse_time(record.get("ChangedAt"), "ChangedAt")
                return [FeedbackItem("unsubscribed", body_key(record), at, **common)]
            return []
        case _:
            return []


# -- Twilio ------------------------------------------------------------------------------
def verify_twilio(
    token: str | None, url: str, params: list[tuple[str, str]], signature: str
) -> None:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL Twilio called followed by every
    POST parameter, sorted, as name + value."""
    if not token:
        raise BadSignature("set feedback.twilio_auth_token_env to verify Twilio webhooks")
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(base64.b64encode(digest).decode(), signature.strip()):
        raise BadSignature("the X-Twilio-Signature does not match this URL and body")


def _param(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise BadPayload(f"{name} is missing", path=name)
    return value


def parse_twilio_status(params: dict[str, str], now: datetime) -> list[FeedbackItem]:
    """A message status callback: delivered, undelivered or failed (others are steps)."""
    sid = _param(params, "MessageSid")
    status = _param(params, "MessageStatus")
    if status not in ("delivered", "undelivered", "failed"):
        return []
    code = params.get("ErrorCode")
    return [
        FeedbackItem(
            "delivered" if status == "delivered" else "failed",
            f"{sid}:{status}",
            now,  # Twilio's callbacks carry no time of their own
            channel="sms",
            provider_id=sid,
            address=params.get("To"),
            reason=f"{status} (Twilio error {code})" if code else status,
            raw=dict(params),
        )
    ]


def parse_twilio_inbound(params: dict[str, str], now: datetime) -> list[FeedbackItem]:
    """An incoming SMS: a reply (STOP and START are acted on when applied)."""
    return [
        FeedbackItem(
            "replied",
            _param(params, "MessageSid"),
            now,
            channel="sms",
            address=_param(params, "From"),
            text=params.get("Body", ""),
            raw=dict(params),
        )
    ]
