"""Receiving provider webhooks: verify that the request is the provider's, then read its
events. One method per provider endpoint; the HTTP routes (api/feedback.py) call these and
hand the items to FeedbackService.

`fetch` (GET a URL, return the body) is the one network call: the SNS signing certificate
and the SNS subscription confirmation. It is injectable; the default uses httpx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx

from nurture.clock import Clock
from nurture.messages.feedback_ses import SnsVerifier, parse_ses
from nurture.messages.providers import (
    BadPayload,
    BadSignature,
    FeedbackConfig,
    FeedbackItem,
    field,
    json_body,
    parse_postmark,
    parse_sendgrid,
    parse_twilio_inbound,
    parse_twilio_status,
    verify_basic,
    verify_sendgrid,
    verify_twilio,
)


class UnverifiedPayload(BadPayload):
    """A body too broken to verify: refused, and (being unauthenticated) not kept."""


def http_fetch(url: str) -> bytes:
    """GET `url` (no redirects, no proxy from the environment, 10 s); raises on non-2xx."""
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=10.0) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.content


class ProviderHooks:
    """Verifies and parses provider webhooks. `secret(name)` reads a credential from the
    environment variable the configuration names (nurture.settings.secret)."""

    def __init__(
        self,
        config: FeedbackConfig,
        base_url: str,
        clock: Clock,
        secret: Callable[[str], str | None],
        fetch: Callable[[str], bytes] = http_fetch,
    ) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.secret = secret
        self.fetch = fetch
        self.sns = SnsVerifier(config, fetch)

    def _env(self, name: str | None) -> str | None:
        return self.secret(name) if name else None

    def ses(self, body: bytes) -> list[FeedbackItem]:
        """POST /hooks/ses: an SNS message. A subscription confirmation is confirmed (when
        `sns_auto_confirm`) by fetching its SubscribeURL; a notification's SES events are
        returned."""
        try:
            message = json_body(body)
            if not isinstance(message, dict):
                raise BadPayload("the body is not an SNS message (a JSON object)")
        except BadPayload as e:
            raise UnverifiedPayload(e.message, path=e.path) from None
        self.sns.verify(message)
        kind = message.get("Type")
        if kind == "SubscriptionConfirmation":
            url = field(message, "SubscribeURL", str, "")
            if self.config.sns_auto_confirm:
                if not self.sns.trusted(url):
                    raise BadSignature(f"the SubscribeURL {url!r} is not an SNS URL")
                self.fetch(url)
            return []
        if kind != "Notification":
            return []
        text = field(message, "Message", str, "")
        return parse_ses(json_body(text.encode()), field(message, "MessageId", str, ""))

    def sendgrid(
        self, body: bytes, signature: str | None, timestamp: str | None
    ) -> list[FeedbackItem]:
        """POST /hooks/sendgrid: the signed Event Webhook."""
        key = self.config.sendgrid_public_key
        if not key:
            raise BadSignature("set feedback.sendgrid_public_key to accept SendGrid events")
        if not signature or not timestamp:
            raise BadSignature("the SendGrid signature headers are missing")
        verify_sendgrid(key, signature, timestamp, body)
        limit = self.config.sendgrid_max_age_seconds
        if limit and timestamp.isdigit():
            age = self.clock.now().timestamp() - int(timestamp)
            if abs(age) > limit:
                raise BadSignature(f"the SendGrid request is {int(age)} s old (limit {limit})")
        return parse_sendgrid(json_body(body))

    def postmark(self, body: bytes, authorization: str | None) -> list[FeedbackItem]:
        """POST /hooks/postmark: one record, behind HTTP basic auth."""
        user = self._env(self.config.postmark_user_env)
        password = self._env(self.config.postmark_password_env)
        verify_basic(authorization, user, password)
        return parse_postmark(json_body(body))

    def twilio(
        self, kind: str, path: str, query: str, body: bytes, signature: str | None
    ) -> list[FeedbackItem]:
        """POST /hooks/twilio/status and /hooks/twilio/inbound: a signed form post. The URL
        Twilio signed is the public one (public_url + path), not the one behind a proxy."""
        try:
            params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise UnverifiedPayload("the body is not a UTF-8 form") from None
        url = self.base_url + path + (f"?{query}" if query else "")
        token = self._env(self.config.twilio_auth_token_env)
        verify_twilio(token, url, params, signature or "")
        form: dict[str, Any] = dict(params)
        now = self.clock.now()
        if kind == "inbound":
            return parse_twilio_inbound(form, now)
        return parse_twilio_status(form, now)
