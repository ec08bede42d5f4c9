"""Local stand-ins for the providers, speaking each one's documented request and answer
shapes, started by the tests that use them.

Behaviour is chosen by the recipient, so one server serves every contract case:

    good (anything else)  accepted, with a provider id
    bad                   permanently rejected, the way that provider rejects a bad address
    throttle              HTTP 429 / SMTP 451 4.7.1, with Retry-After: 7 where HTTP allows
    boom                  HTTP 503 / SMTP 451 4.3.0
    slow                  answers after SLOW seconds (tests use a shorter client timeout)

Emails are `<behaviour>...@example.com`; phone numbers end in the behaviour's code (PHONES);
push and webhook URLs end in `/<behaviour>...`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, LoginPassword, Session

SLOW = 1.5
PHONES = {
    "+15550000001": "bad",
    "+15550000429": "throttle",
    "+15550000500": "boom",
    "+15550000999": "slow",
}
TWILIO_SID = "AC" + "0" * 32
SENDGRID_KEY = "SG.test-key"
POSTMARK_TOKEN = "postmark-token"


def behaviour(recipient: str) -> str:
    """What the fake does for a recipient (an address, number or URL)."""
    if recipient in PHONES:
        return PHONES[recipient]
    last = recipient.rsplit("/", 1)[-1].split("@")[0]
    for name in ("bad", "throttle", "boom", "slow", "drop"):
        if last.startswith(name):
            return name
    return "good"


@dataclass
class Recorded:
    provider: str
    path: str
    headers: dict[str, str]
    body: bytes
    recipient: str
    marker: str | None  # what a resend of the same message repeats (Message-ID, Topic, ...)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _message_id(raw: bytes) -> str | None:
    value = message_from_bytes(raw, policy=policy.default)["Message-ID"]
    return str(value) if value else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k: v for k, v in self.headers.items()}
        path = self.path
        n = next(self.server.ids)
        if path == "/v2/email/outbound-emails":
            self._ses(path, headers, body, n)
        elif path == "/v3/mail/send":
            self._sendgrid(path, headers, body, n)
        elif path == "/email":
            self._postmark(path, headers, body, n)
        elif path.startswith("/2010-04-01/Accounts/"):
            self._twilio(path, headers, body, n)
        elif path.startswith("/push/"):
            self._push(path, headers, body, n)
        elif path.startswith("/hook/"):
            self._hook(path, headers, body, n)
        else:
            self._answer(404, {"message": "no such path"})

    def _record(
        self,
        provider: str,
        headers: dict[str, str],
        body: bytes,
        recipient: str,
        marker: str | None,
    ) -> str:
        self.server.requests.append(Recorded(provider, self.path, headers, body, recipient, marker))
        what = behaviour(recipient)
        if what == "slow":
            time.sleep(SLOW)
        return what

    def _common(self, what: str) -> bool:
        """Answer throttle and boom the generic way; True when answered."""
        if what == "throttle":
            self._answer(429, {"message": "Too Many Requests"}, {"Retry-After": "7"})
            return True
        if what == "boom":
            self._answer(503, {"message": "Service Unavailable"})
            return True
        return False

    def _ses(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        doc = json.loads(body)
        raw = base64.b64decode(doc["Content"]["Raw"]["Data"])
        what = self._record(
            "ses", headers, body, doc["Destination"]["ToAddresses"][0], _message_id(raw)
        )
        if not headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 Credential=AKID/"):
            self._answer(403, {"message": "missing signature"}, {"x-amzn-ErrorType": "Forbidden"})
        elif what == "bad":
            self._answer(
                400,
                {"message": "Email address is not verified."},
                {"x-amzn-ErrorType": "MessageRejected:http://internal.amazon.com/"},
            )
        elif what == "throttle":
            self._answer(
                429,
                {"message": "Maximum sending rate exceeded."},
                {"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "7"},
            )
        elif not self._common(what):
            self._answer(200, {"MessageId": f"0100-ses-{n}"})

    def _sendgrid(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        doc = json.loads(body)
        what = self._record(
            "sendgrid",
            headers,
            body,
            doc["personalizations"][0]["to"][0]["email"],
            doc.get("headers", {}).get("Message-ID"),
        )
        if headers.get("Authorization") != f"Bearer {SENDGRID_KEY}":
            self._answer(401, {"errors": [{"message": "authorization required"}]})
        elif what == "bad":
            self._answer(
                400,
                {
                    "errors": [
                        {
                            "message": "Does not contain a valid address.",
                            "field": "personalizations.0.to.0.email",
                            "help": "http://sendgrid.com/docs/errors",
                        }
                    ]
                },
            )
        elif not self._common(what):
            self._answer(202, None, {"X-Message-Id": f"sg-{n}"})

    def _postmark(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        doc = json.loads(body)
        mid = next((h["Value"] for h in doc.get("Headers", []) if h["Name"] == "Message-ID"), None)
        to = doc["To"].rsplit("<", 1)[-1].rstrip(">")
        what = self._record("postmark", headers, body, to, mid)
        if headers.get("X-Postmark-Server-Token") != POSTMARK_TOKEN:
            self._answer(401, {"ErrorCode": 10, "Message": "Bad or missing API token"})
        elif what == "bad":
            self._answer(
                422,
                {
                    "ErrorCode": 406,
                    "Message": "You tried to send to recipient(s) "
                    "that have been marked as inactive.",
                },
            )
        elif not self._common(what):
            self._answer(
                200,
                {
                    "To": to,
                    "SubmittedAt": "2026-03-01T12:00:00Z",
                    "MessageID": f"pm-{n}",
                    "ErrorCode": 0,
                    "Message": "OK",
                },
            )

    def _twilio(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        what = self._record("twilio", headers, body, form.get("To", ""), None)
        expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:twilio-token".encode()).decode()
        kind = "SM" if path.endswith("/Messages.json") else "CA"
        if headers.get("Authorization") != expected:
            self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
        elif what == "bad":
            self._answer(
                400,
                {
                    "code": 21211,
                    "message": f"The 'To' number {form['To']} is not a valid phone number.",
                    "more_info": "https://www.twilio.com/docs/errors/21211",
                    "status": 400,
                },
            )
        elif what == "throttle":
            self._answer(
                429,
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": "7"},
            )
        elif not self._common(what):
            self._answer(201, {"sid": f"{kind}{n:032d}", "status": "queued"})

    def _push(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        what = self._record("webpush", headers, body, path, headers.get("Topic"))
        if not headers.get("Authorization", "").startswith("vapid t="):
            self._answer(401, None)
        elif what == "bad":
            self._answer(410, None)
        elif not self._common(what):
            self._answer(201, None, {"Location": f"{self.server.base}/messages/{n}"})

    def _hook(self, path: str, headers: dict[str, str], body: bytes, n: int) -> None:
        what = self._record("webhook", headers, body, path, headers.get("Idempotency-Key"))
        if what == "bad":
            self._answer(400, {"message": "unknown event"})
        elif not self._common(what):
            self._answer(200, {"ok": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Recorded] = []
        self.ids = itertools.count(1)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def providers() -> Iterator[_Server]:
    """The HTTP providers, on a free local port, for the duration of the block."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -- SMTP --------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None = None


@dataclass
class SmtpHandler:
    """An aiosmtpd handler that keeps what it accepted and refuses by recipient."""

    received: list[Received] = field(default_factory=list)
    connections: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not getattr(session, "_counted", False):
            session._counted = True  # type: ignore[attr-defined]
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        what = behaviour(address)
        if what == "bad":
            return f"550 5.1.1 <{address}>: no such user"
        if what == "throttle":
            return "451 4.7.1 rate limited, try again later"
        if what == "boom":
            return "451 4.3.0 try again later"
        if what == "slow":
            await asyncio.sleep(SLOW)
        if what == "drop":
            assert server.transport is not None
            server.transport.close()
            return "250 OK"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or b""),
                login,
            )
        )
        return "250 OK queued"


@contextmanager
def smtp_server_on(port: int, **kwargs: Any) -> Iterator[SmtpHandler]:
    """An aiosmtpd server on `port`; yields its handler."""
    handler = SmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@contextmanager
def smtp_server(**kwargs: Any) -> Iterator[tuple[SmtpHandler, int]]:
    """An aiosmtpd server on a free port: (its handler, the port)."""
    port = free_port()
    with smtp_server_on(port, **kwargs) as handler:
        yield handler, port
