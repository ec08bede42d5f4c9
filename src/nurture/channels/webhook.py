"""Webhook messages: a JSON document POSTed to a URL, signed like every outgoing webhook
(nurture.webhooks: `Nurture-Signature: t=...,v1=...`) and carrying the outbox key as
`Idempotency-Key`, so a receiver can drop the duplicate of a resend. The HTTP call and its
reading are the one webhook caller's (`HttpWebhookCaller`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from nurture.channels.base import Failed, Hook, Outgoing, Result, Retry, Sent
from nurture.clock import Clock, SystemClock
from nurture.webhooks import HttpWebhookCaller, WebhookCaller, WebhookRequest


class WebhookChannel:
    """POSTs `Hook` messages, signed with `secret` when one is configured."""

    provider = "webhook"
    channels = frozenset({"webhook"})

    def __init__(
        self,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        caller: WebhookCaller | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.secret = secret
        self.timeout = timeout
        self._own_caller = caller is None
        self.caller = caller or HttpWebhookCaller()
        self.clock = clock or SystemClock()

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """POST each message."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        if not isinstance(item.content, Hook):
            kind = type(item.content).__name__
            return Failed(f"the webhook channel sends webhooks, not {kind}", "wrong_channel")
        request = WebhookRequest(
            url=item.content.url,
            body=item.content.body,
            secret=self.secret,
            timeout=self.timeout,
            idempotency_key=item.key,
        )
        outcome = self.caller.call(request, now=int(self.clock.now().timestamp()))
        error = outcome.error or "no reason given"
        if outcome.kind == "ok":
            # A receiver has no message id of its own: the key's digest stands for one.
            return Sent(f"hook-{hashlib.sha256(item.key.encode()).hexdigest()[:20]}")
        if outcome.kind == "retry":
            return Retry(error, after=outcome.retry_after, throttled=outcome.status == 429)
        code = f"http_{outcome.status}" if outcome.status else "webhook_request"
        return Failed(error, code)

    def close(self) -> None:
        """Close the pooled connections of the caller this channel made."""
        if self._own_caller and isinstance(self.caller, HttpWebhookCaller):
            self.caller.close()
