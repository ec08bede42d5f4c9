"""Amazon SES, API v2 `SendEmail` with `Content.Raw`: the MIME from mime.py goes out as
it is, so List-Unsubscribe and the other headers survive. Requests are signed with SigV4
(botocore) and sent with httpx; the answer's `MessageId` is the provider id.

SES documents no idempotency key for SendEmail; our Message-ID header (derived from the
outbox key) is in the raw message. Errors come back as `x-amzn-ErrorType` (and `__type`
or `code` in the body): throttling is a Retry(throttled), `MessageRejected` and the other
request errors are Failed, a paused or suspended account is a Retry (the operator fixes it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import httpx
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from nurture.channels import http
from nurture.channels.base import Email, Failed, Outgoing, Result, Retry, Sent
from nurture.channels.mime import BadEmail, build
from nurture.clock import Clock, SystemClock

PATH = "/v2/email/outbound-emails"
THROTTLED = frozenset({"Throttling", "ThrottlingException", "TooManyRequestsException"})
ACCOUNT = frozenset({"SendingPausedException", "AccountSuspendedException"})
_TAG = re.compile(r"[^A-Za-z0-9_-]")  # SES tag names and values allow only these


def _error_type(response: httpx.Response, body: dict[str, object]) -> str:
    raw = response.headers.get("x-amzn-ErrorType") or str(
        body.get("__type") or body.get("code") or ""
    )
    # "MessageRejected:http://internal.amazon.com/..." or "com.amazon...#MessageRejected"
    return raw.split(":", 1)[0].rpartition("#")[2]


class SesChannel:
    """Email through Amazon SES."""

    provider = "ses"
    channels = frozenset({"email"})

    def __init__(
        self,
        *,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        endpoint: str | None = None,
        configuration_set: str | None = None,
        default_from: str | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.region = region
        self.endpoint = (endpoint or f"https://email.{region}.amazonaws.com").rstrip("/")
        self.configuration_set = configuration_set
        self.default_from = default_from
        self.clock = clock or SystemClock()
        self._signer = SigV4Auth(
            Credentials(access_key_id, secret_access_key, session_token), "ses", region
        )
        self._http = http.client(timeout=timeout)

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Send each message with its own SendEmail call."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        if not isinstance(item.content, Email):
            kind = type(item.content).__name__
            return Failed(f"the ses channel sends email, not {kind}", "wrong_channel")
        try:
            sender, to, _mid, raw = build(
                item.content, key=item.key, date=self.clock.now(), default_from=self.default_from
            )
        except BadEmail as exc:
            return Failed(str(exc), "invalid_email")
        document: dict[str, object] = {
            "FromEmailAddress": sender,
            "Destination": {"ToAddresses": [to]},
            "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
        }
        if self.configuration_set:
            document["ConfigurationSetName"] = self.configuration_set
        if item.tags:
            document["EmailTags"] = [
                {"Name": _TAG.sub("_", k)[:256], "Value": _TAG.sub("_", v)[:256] or "_"}
                for k, v in item.tags.items()
            ]
        body = orjson.dumps(document)
        url = self.endpoint + PATH
        request = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        self._signer.add_auth(request)  # signs with botocore's own reading of the time
        answer = http.post(self._http, "ses", url, content=body, headers=dict(request.headers))
        if not isinstance(answer, httpx.Response):
            return answer
        parsed = http.body_json(answer)
        if answer.status_code == 200:
            message_id = parsed.get("MessageId")
            if isinstance(message_id, str) and message_id:
                return Sent(message_id)
            return Retry("ses answered 200 without a MessageId")
        kind = _error_type(answer, parsed)
        message = str(parsed.get("message") or parsed.get("Message") or answer.text)
        error = f"ses {kind or answer.status_code}: {http.short(message)}"
        if kind in THROTTLED:
            return Retry(error, after=http.after(answer, self.clock.now), throttled=True)
        if kind in ACCOUNT:
            return Retry(f"{error} (the SES account cannot send at the moment)")
        if kind and answer.status_code < 500 and answer.status_code not in (408, 429):
            return Failed(error, f"ses_{kind}")
        return http.classify(answer, "ses", message, self.clock.now)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
