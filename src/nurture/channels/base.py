"""What every channel adapter speaks: one small protocol, and the message shapes it sends.

The dispatcher (messages/dispatch.py) decides whether, when and what to send; an adapter
only delivers. It never raises for a message it could not deliver: it answers with a
`Result` per message, so one bad address or a provider outage never takes the others
down with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Email:
    """An email, rendered: addresses are plain, names may be non-ASCII (the adapter encodes)."""

    to: str
    from_address: str
    subject: str
    html: str
    text: str
    to_name: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    preheader: str = ""
    # Extra headers, e.g. List-Unsubscribe and List-Unsubscribe-Post (RFC 8058).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sms:
    to: str  # E.164, e.g. +4915112345678
    body: str
    from_number: str | None = None


@dataclass(frozen=True, slots=True)
class Voice:
    """A phone call that reads `text` aloud."""

    to: str  # E.164
    text: str
    language: str = "en-US"
    from_number: str | None = None


@dataclass(frozen=True, slots=True)
class PushSubscription:
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class Push:
    subscription: PushSubscription
    title: str
    body: str
    url: str | None = None
    icon: str | None = None


@dataclass(frozen=True, slots=True)
class Hook:
    """A JSON document POSTed to a URL, HMAC-signed (nurture.webhooks)."""

    url: str
    body: dict[str, object]


Content = Email | Sms | Voice | Push | Hook
ChannelName = Literal["email", "sms", "voice", "push", "webhook"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to deliver.

    `key` is stable across retries of the same message (the outbox idempotency key); an
    adapter passes it to providers that accept an idempotency key, and uses it for the
    Message-ID of an email. `tags` are echoed back by providers that support it (custom
    args, metadata), so feedback can be matched to the message.
    """

    key: str
    content: Content
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sent:
    provider_id: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure (4xx SMTP, 5xx HTTP, timeouts, 429): try again later.

    `after` is the provider's Retry-After in seconds when it gave one; `throttled` says the
    provider asked us to slow down (429, "Throttling"), so the dispatcher lowers its rate.
    """

    error: str
    after: float | None = None
    throttled: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: never retried. `bounce` means the address cannot receive
    (hard bounce, invalid number, expired push subscription) and should be suppressed."""

    error: str
    code: str
    bounce: bool = False


Result = Sent | Retry | Failed


@runtime_checkable
class Channel(Protocol):
    """A provider adapter. `send` answers one `Result` per message, in order."""

    provider: str  # smtp, ses, sendgrid, postmark, twilio, webpush, webhook, file, memory
    channels: frozenset[str]  # which ChannelName values it delivers

    def send(self, batch: Sequence[Outgoing]) -> list[Result]: ...

    def close(self) -> None: ...
