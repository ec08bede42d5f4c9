"""Postmark, `POST /email` with the `X-Postmark-Server-Token` header: the answer's
`MessageID` is the provider id; `Metadata` carries our tags, `MessageStream` picks the
stream (`outbound` for transactional, a broadcast stream for marketing).

Postmark documents no idempotency key; our Message-ID header (from the outbox key) goes
in `Headers`. Errors are HTTP 422 with an `ErrorCode`: 406 (inactive recipient: bounced,
complained or unsubscribed before) is a bounce, and so is 300 (invalid email request)
when its message is about the `To` address; other 300s are the request's own fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import formataddr
from typing import Any

import httpx

from nurture.channels import http
from nurture.channels.base import Email, Failed, Outgoing, Result, Retry, Sent
from nurture.channels.mime import BadEmail, parties
from nurture.clock import Clock, SystemClock

INVALID_REQUEST = 300
INACTIVE_RECIPIENT = 406
RATE_LIMITED = 429


class PostmarkChannel:
    """Email through Postmark."""

    provider = "postmark"
    channels = frozenset({"email"})

    def __init__(
        self,
        *,
        server_token: str,
        base_url: str = "https://api.postmarkapp.com",
        message_stream: str = "outbound",
        default_from: str | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/email"
        self.message_stream = message_stream
        self.default_from = default_from
        self.clock = clock or SystemClock()
        self._headers = {"X-Postmark-Server-Token": server_token, "Accept": "application/json"}
        self._http = http.client(timeout=timeout)

    def payload(self, item: Outgoing, email: Email) -> dict[str, Any]:
        """The /email document for one email (raises BadEmail)."""
        who = parties(email, key=item.key, default_from=self.default_from)
        headers = {**email.headers, "Message-ID": who.message_id}
        document: dict[str, Any] = {
            "From": formataddr((who.from_name or "", who.from_address), "utf-8"),
            "To": formataddr((who.to_name or "", who.to_address), "utf-8"),
            "Subject": email.subject,
            "Headers": [{"Name": k, "Value": v} for k, v in headers.items()],
            "MessageStream": self.message_stream,
        }
        if email.html:
            document["HtmlBody"] = email.html
        if email.text or not email.html:
            document["TextBody"] = email.text or " "
        if email.reply_to:
            document["ReplyTo"] = email.reply_to
        if item.tags:
            document["Metadata"] = dict(item.tags)
        return document

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Send each message with its own /email call."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        if not isinstance(item.content, Email):
            kind = type(item.content).__name__
            return Failed(f"the postmark channel sends email, not {kind}", "wrong_channel")
        try:
            document = self.payload(item, item.content)
        except BadEmail as exc:
            return Failed(str(exc), "invalid_email")
        answer = http.post(self._http, "postmark", self.url, json=document, headers=self._headers)
        if not isinstance(answer, httpx.Response):
            return answer
        body = http.body_json(answer)
        code = body.get("ErrorCode")
        message = str(body.get("Message") or "")
        if answer.status_code == 200 and code in (0, None):
            message_id_ = body.get("MessageID")
            if isinstance(message_id_, str) and message_id_:
                return Sent(message_id_)
            return Retry("postmark answered 200 without a MessageID")
        if code == RATE_LIMITED or answer.status_code == 429:
            wait = http.after(answer, self.clock.now)
            return Retry(f"postmark rate limit: {message}", after=wait, throttled=True)
        if answer.status_code == 422 and isinstance(code, int):
            recipient = code == INACTIVE_RECIPIENT or (
                code == INVALID_REQUEST and "'to'" in message.lower()
            )
            error = f"postmark error {code}: {http.short(message)}"
            return Failed(error, f"postmark_{code}", recipient)
        return http.classify(answer, "postmark", message or None, self.clock.now)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
