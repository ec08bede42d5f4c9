"""SendGrid, v3 `POST /v3/mail/send`: 202 Accepted with the id in `X-Message-Id`.

SendGrid documents no idempotency key; our Message-ID header (from the outbox key) is
set among the message's headers, and `custom_args` carry our tags so event webhooks can
be matched to the message. A 400 lists its problems in an `errors` array; one about the
recipient's address (`personalizations.N.to...`) is a bounce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from nurture.channels import http
from nurture.channels.base import Email, Failed, Outgoing, Result, Sent
from nurture.channels.mime import BadEmail, parties, split_address
from nurture.clock import Clock, SystemClock


def _person(name: str | None, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


def _errors(body: dict[str, Any]) -> tuple[str | None, bool]:
    """The errors array as one message, and whether one is about the recipient."""
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors:
        return None, False
    texts, recipient = [], False
    for e in errors:
        if not isinstance(e, dict):
            continue
        field = str(e.get("field") or "")
        texts.append(f"{e.get('message')}" + (f" ({field})" if field else ""))
        recipient = recipient or (".to" in field and "email" in field)
    return "; ".join(texts) or None, recipient


class SendgridChannel:
    """Email through SendGrid."""

    provider = "sendgrid"
    channels = frozenset({"email"})

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "https://api.sendgrid.com",
        default_from: str | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v3/mail/send"
        self.default_from = default_from
        self.clock = clock or SystemClock()
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = http.client(timeout=timeout)

    def payload(self, item: Outgoing, email: Email) -> dict[str, Any]:
        """The mail/send document for one email (raises BadEmail)."""
        who = parties(email, key=item.key, default_from=self.default_from)
        personalization: dict[str, Any] = {"to": [_person(who.to_name, who.to_address)]}
        if item.tags:
            personalization["custom_args"] = dict(item.tags)
        content = [{"type": "text/plain", "value": email.text}] if email.text else []
        if email.html:
            content.append({"type": "text/html", "value": email.html})
        headers = {**email.headers, "Message-ID": who.message_id}
        document: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _person(who.from_name, who.from_address),
            "subject": email.subject,
            "content": content or [{"type": "text/plain", "value": " "}],
            "headers": headers,
        }
        if email.reply_to:
            reply_name, reply_address = split_address(email.reply_to)
            document["reply_to"] = _person(reply_name, reply_address)
        return document

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Send each message with its own mail/send call."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        if not isinstance(item.content, Email):
            kind = type(item.content).__name__
            return Failed(f"the sendgrid channel sends email, not {kind}", "wrong_channel")
        try:
            document = self.payload(item, item.content)
        except BadEmail as exc:
            return Failed(str(exc), "invalid_email")
        answer = http.post(self._http, "sendgrid", self.url, json=document, headers=self._headers)
        if not isinstance(answer, httpx.Response):
            return answer
        if answer.status_code in (200, 202):
            # Without X-Message-Id (never seen, but not promised), our Message-ID identifies it.
            return Sent(answer.headers.get("X-Message-Id") or document["headers"]["Message-ID"])
        message, recipient = _errors(http.body_json(answer))
        return http.classify(answer, "sendgrid", message, self.clock.now, bounce=recipient)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
