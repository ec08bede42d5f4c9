"""Segment-spec messages: parsing and validation of one message at a time.

A hand-written validator rather than a pydantic model: this runs for every event
on the hot path, must accept everything Segment's own API accepts (numeric ids,
`null` fields, traits under `context.traits`), and must name the exact path of
the first bad field with a stable error code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 255


class MessageError(Exception):
    """One message is invalid. `path` is relative to the message (`traits`, `timestamp`)."""

    def __init__(self, code: str, path: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.path = path
        self.message = message


@dataclass(slots=True)
class Message:
    """A valid message, normalised: ids are strings, times are aware UTC datetimes."""

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    event: str | None  # track: event name; page/screen: name
    previous_id: str | None  # alias
    group_id: str | None  # group
    traits: dict[str, Any] | None
    properties: dict[str, Any] | None
    context: dict[str, Any] | None
    timestamp: datetime
    received_at: datetime
    sent_at: datetime | None
    original_timestamp: datetime | None
    # properties/traits/context already serialised to JSON text, done while parsing
    # (in parallel with the writer) so that the write transaction does not have to.
    encoded: dict[str, str | None] | None = None


def parse_time(value: Any, path: str) -> datetime | None:
    """Read an ISO-8601 timestamp; a time without an offset is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError("invalid_timestamp", path, "expected an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MessageError(
            "invalid_timestamp", path, f"{value[:40]!r} is not an ISO-8601 date-time"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise MessageError("invalid_timestamp", path, "date-time out of range") from None


def _identifier(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MessageError("invalid_type", path, "expected a string (or a number)")
    if isinstance(value, float):
        value = int(value) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        return None
    if len(text) > MAX_ID_LENGTH:
        raise MessageError("too_long", path, f"longer than {MAX_ID_LENGTH} characters")
    return text


def _object(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MessageError("invalid_type", path, "expected an object")
    return value


def _name(value: Any, path: str, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise MessageError("missing_field", path, "is required and must not be empty")
        return None
    if not isinstance(value, str):
        raise MessageError("invalid_type", path, "expected a string")
    if len(value) > MAX_NAME_LENGTH:
        raise MessageError("too_long", path, f"longer than {MAX_NAME_LENGTH} characters")
    return value


def derived_message_id(raw: dict[str, Any]) -> str:
    """A message without a messageId gets one derived from its content, so that a
    resend (or a re-imported file) of the same content is still stored once."""
    content = {k: v for k, v in raw.items() if k not in ("sentAt", "writeKey", "messageId")}
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"nurture-{digest[:40]}"


def parse_message(
    raw: Any,
    *,
    received_at: datetime,
    default_type: str | None = None,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
) -> Message:
    """Validate one Segment message and normalise it, or raise MessageError."""
    if not isinstance(raw, dict):
        raise MessageError("invalid_type", None, "a message must be a JSON object")

    kind = raw.get("type") or default_type
    if kind is None:
        raise MessageError(
            "missing_field", "type", f"is required: one of {', '.join(MESSAGE_TYPES)}"
        )
    if not isinstance(kind, str) or kind.lower() not in MESSAGE_TYPES:
        raise MessageError("invalid_value", "type", f"must be one of {', '.join(MESSAGE_TYPES)}")
    kind = kind.lower()
    if default_type is not None and kind != default_type:
        raise MessageError("invalid_value", "type", f"this endpoint takes {default_type} messages")

    message_id = _identifier(raw.get("messageId"), "messageId") or derived_message_id(raw)
    user_id = _identifier(raw.get("userId"), "userId")
    anonymous_id = _identifier(raw.get("anonymousId"), "anonymousId")

    context = _object(raw.get("context"), "context")
    if batch_context:
        context = {**batch_context, **(context or {})}
    properties = _object(raw.get("properties"), "properties")
    traits = _object(raw.get("traits"), "traits")

    event: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    if kind == "track":
        event = _name(raw.get("event"), "event", required=True)
    elif kind in ("page", "screen"):
        event = _name(raw.get("name"), "name", required=False)
    elif kind == "identify":
        if not traits and context is not None:
            traits = _object(context.get("traits"), "context.traits")
    elif kind == "group":
        group_id = _identifier(raw.get("groupId"), "groupId")
        if group_id is None:
            raise MessageError("missing_field", "groupId", "is required for group messages")
    elif kind == "alias":
        previous_id = _identifier(raw.get("previousId"), "previousId")
        if previous_id is None:
            raise MessageError("missing_field", "previousId", "is required for alias messages")
        if user_id is None:
            raise MessageError("missing_field", "userId", "is required for alias messages")

    if user_id is None and anonymous_id is None:
        raise MessageError("missing_field", "userId", "userId or anonymousId is required")

    timestamp = parse_time(raw.get("timestamp"), "timestamp")
    original = parse_time(raw.get("originalTimestamp"), "originalTimestamp")
    sent_at = parse_time(raw.get("sentAt"), "sentAt") or batch_sent_at
    if timestamp is None:
        if original is not None and sent_at is not None:
            # Segment's rule: trust the server's clock, keep the device's offsets.
            try:
                timestamp = received_at - (sent_at - original)
            except OverflowError:
                raise MessageError(
                    "invalid_timestamp",
                    "originalTimestamp",
                    "is so far from sentAt that the corrected time is out of range",
                ) from None
        else:
            timestamp = original or received_at

    return Message(
        type=kind,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event=event,
        previous_id=previous_id,
        group_id=group_id,
        traits=traits,
        properties=properties,
        context=context,
        timestamp=timestamp,
        received_at=received_at,
        sent_at=sent_at,
        original_timestamp=original,
    )
