"""Twilio SMS (`Messages.json`) and voice (`Calls.json` with inline TwiML that reads the
text aloud): form-encoded POSTs with HTTP Basic auth (account SID and auth token); the
answer's `sid` is the provider id. `StatusCallback` points Twilio's delivery reports at
our webhook, with the message's tags in its query so a report can be matched.

Twilio documents no idempotency key for creating messages or calls, so a resend after a
crash may reach the phone twice (the outbox flags such a resend). Errors carry Twilio's
`code`: 21211 (invalid 'To'), 21610 (the recipient replied STOP) and 21614 (not a mobile
number) are Failed bounces; 20429 and HTTP 429 are throttling.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

import httpx

from nurture.channels import http
from nurture.channels.base import Failed, Outgoing, Result, Retry, Sent, Sms, Voice
from nurture.clock import Clock, SystemClock

BOUNCE_CODES = frozenset({21211, 21610, 21614})
THROTTLE_CODES = frozenset({20429})


def twiml(text: str, language: str) -> str:
    """The TwiML that reads `text` aloud in `language`, XML-escaped."""
    return f"<Response><Say language={quoteattr(language)}>{escape(text)}</Say></Response>"


class TwilioChannel:
    """SMS and voice calls through Twilio."""

    provider = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        base_url: str = "https://api.twilio.com",
        channels: frozenset[str] = frozenset({"sms", "voice"}),
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.channels = frozenset(channels)
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        account = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}"
        self._urls = {"sms": f"{account}/Messages.json", "voice": f"{account}/Calls.json"}
        self._auth = (account_sid, auth_token)
        self.clock = clock or SystemClock()
        self._http = http.client(timeout=timeout)

    def form(self, item: Outgoing) -> tuple[str, dict[str, str]] | Failed:
        """(channel, the form fields) for one message, or why it cannot be sent."""
        content = item.content
        if isinstance(content, Sms):
            name, fields = "sms", {"To": content.to, "Body": content.body}
            sender = content.from_number or self.from_number
        elif isinstance(content, Voice):
            name = "voice"
            fields = {"To": content.to, "Twiml": twiml(content.text, content.language)}
            sender = content.from_number or self.from_number
        else:
            kind = type(content).__name__
            return Failed(f"the twilio channel sends SMS and calls, not {kind}", "wrong_channel")
        if name not in self.channels:
            return Failed(f"the twilio channel is not set up for {name}", "wrong_channel")
        if sender:
            fields["From"] = sender
        elif name == "sms" and self.messaging_service_sid:
            fields["MessagingServiceSid"] = self.messaging_service_sid
        else:
            return Failed("no `from` number for Twilio (set it in the channel settings)", "config")
        if self.status_callback:
            query = urlencode(sorted(item.tags.items()))
            joiner = "&" if "?" in self.status_callback else "?"
            fields["StatusCallback"] = self.status_callback + (joiner + query if query else "")
        return name, fields

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Create one message or call per item."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        prepared = self.form(item)
        if isinstance(prepared, Failed):
            return prepared
        name, fields = prepared
        answer = http.post(self._http, "twilio", self._urls[name], data=fields, auth=self._auth)
        if not isinstance(answer, httpx.Response):
            return answer
        body = http.body_json(answer)
        if answer.status_code in (200, 201):
            sid = body.get("sid")
            if isinstance(sid, str) and sid:
                return Sent(sid)
            return Retry("twilio answered without a sid")
        code = body.get("code")
        message = str(body.get("message") or "") or None
        if (isinstance(code, int) and code in THROTTLE_CODES) or answer.status_code == 429:
            wait = http.after(answer, self.clock.now)
            return Retry(f"twilio {code}: {message}", after=wait, throttled=True)
        status = answer.status_code
        if isinstance(code, int) and 400 <= status < 500 and status not in (401, 429):
            error = f"twilio error {code}: {http.short(message or '')}"
            return Failed(error, f"twilio_{code}", code in BOUNCE_CODES)
        return http.classify(answer, "twilio", message, self.clock.now)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
