"""Outgoing webhooks against a real local HTTP server: signing, classification, retries."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from nurture.webhooks import (
    SIGNATURE_HEADER,
    HttpWebhookCaller,
    RecordingWebhookCaller,
    WebhookCaller,
    WebhookOutcome,
    WebhookRequest,
    backoff,
    sign,
    verify,
)

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
SECRET = "whsec_test"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"received":true}'
    delay: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class ScriptedServer(ThreadingHTTPServer):
    """Answers each path with its scripted Reply (default 200) and records every request."""

    daemon_threads = True
    block_on_close = False  # a request still sleeping must not hold up the test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: dict[str, Reply] = {}
        self.received: list[Received] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left is part of the script


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"  # keep-alive, so the caller's pool is exercised

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.server.lock:
            self.server.received.append(Received(self.command, self.path, headers, body))
        reply = self.server.replies.get(self.path, Reply())
        time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        payload = b"" if reply.status in (204, 304) else reply.body
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def running_server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(running_server: ScriptedServer) -> ScriptedServer:
    """The module's server with an empty script and record."""
    with running_server.lock:
        running_server.replies.clear()
        running_server.received.clear()
    return running_server


@pytest.fixture
def caller() -> Iterator[HttpWebhookCaller]:
    with HttpWebhookCaller() as real:
        yield real


def test_signed_call_sends_json_body_idempotency_key_and_a_verifiable_signature(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # Given a signed request with a JSON body and an idempotency key
    body = {"email": "alice@example.com", "score": 87, "tags": ["hot", "é"]}
    request = WebhookRequest(
        server.url("/crm"),
        body=body,
        secret=SECRET,
        idempotency_key="step-42",
        headers={"X-A": "1"},
    )

    # When it is sent
    outcome = caller.call(request, now=NOW)

    # Then it succeeds, and the receiver got the JSON, the key and a signature that verifies
    assert outcome == WebhookOutcome("ok", 200, None, None, '{"received":true}')
    [got] = server.received
    assert (got.method, got.path) == ("POST", "/crm")
    assert orjson.loads(got.body) == body
    assert got.headers["content-type"] == "application/json"
    assert got.headers["idempotency-key"] == "step-42"
    assert got.headers["user-agent"] == "Nurture-Webhooks/1"
    assert got.headers["x-a"] == "1"
    header = got.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, header, got.body, now=NOW + 10)
    # and an independent recomputation of the Stripe scheme agrees
    mac = hmac.new(SECRET.encode(), f"{NOW}.".encode() + got.body, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={mac}"


def test_a_retry_sends_the_same_idempotency_key_signed_at_the_new_time(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # Given a request that is sent, then sent again a minute later
    request = WebhookRequest(server.url("/crm"), body={"a": 1}, secret=SECRET, idempotency_key="k")
    caller.call(request, now=NOW)
    caller.call(request, now=NOW + 60)

    # Then the key is the same and each signature carries its own time
    first, second = server.received
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == "k"
    assert first.headers[SIGNATURE_HEADER.lower()].startswith(f"t={NOW},")
    assert second.headers[SIGNATURE_HEADER.lower()].startswith(f"t={NOW + 60},")


def test_a_call_without_body_sends_nothing_and_signs_the_empty_body(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # When a GET without body is signed and sent
    outcome = caller.call(WebhookRequest(server.url("/ping"), "get", secret=SECRET), now=NOW)

    # Then it has no body, no content type, and the signature covers the empty body
    [got] = server.received
    assert outcome.kind == "ok" and got.method == "GET" and got.body == b""
    assert "content-type" not in got.headers
    assert verify(SECRET, got.headers[SIGNATURE_HEADER.lower()], b"", now=NOW)


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (200, "ok", None),
        (201, "ok", None),
        (204, "ok", None),
        (400, "fail", "Bad Request"),
        (401, "fail", "Unauthorized"),
        (404, "fail", "Not Found"),
        (410, "fail", "Gone"),
        (422, "fail", "Unprocessable"),
        (408, "retry", "Request Timeout"),
        (425, "retry", "Too Early"),
        (500, "retry", "Internal Server Error"),
        (501, "fail", "Not Implemented"),
        (502, "retry", "Bad Gateway"),
        (503, "retry", "Service Unavailable"),
        (504, "retry", "Gateway Timeout"),
        (505, "fail", "HTTP Version Not Supported"),
    ],
)
def test_each_status_is_classified(
    server: ScriptedServer, caller: HttpWebhookCaller, status: int, kind: str, reason: str | None
) -> None:
    # Given an endpoint that answers `status`
    server.replies["/x"] = Reply(status, body=b"details")

    # When it is called
    outcome = caller.call(WebhookRequest(server.url("/x"), body={}), now=NOW)

    # Then the outcome is ok, retry or fail, with an error naming the status, host and reason
    assert (outcome.kind, outcome.status, outcome.retry_after) == (kind, status, None)
    assert outcome.response_body == ("" if status == 204 else "details")
    if reason is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert outcome.error.startswith(f"HTTP {status} from 127.0.0.1: {reason}")


def test_a_redirect_is_not_followed_and_fails_naming_the_location(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # Given an endpoint that moved
    server.replies["/old"] = Reply(301, {"Location": "https://crm.example/new"})

    # When it is called
    outcome = caller.call(WebhookRequest(server.url("/old"), body={}), now=NOW)

    # Then it fails, names the new location, and the new location was never called
    assert (outcome.kind, outcome.status) == ("fail", 301)
    assert outcome.error is not None and "https://crm.example/new" in outcome.error
    assert [r.path for r in server.received] == ["/old"]


def test_429_with_retry_after_seconds_is_a_retry_after_that_long(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    server.replies["/slow-down"] = Reply(429, {"Retry-After": "120"})
    outcome = caller.call(WebhookRequest(server.url("/slow-down")), now=NOW)
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", 429, 120.0)
    assert outcome.error == "HTTP 429 from 127.0.0.1: Too Many Requests"


def test_429_with_retry_after_date_counts_from_now(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # Given a Retry-After HTTP-date 90 s after the caller's `now`, and one already past
    later = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    server.replies["/later"] = Reply(429, {"Retry-After": later})
    server.replies["/past"] = Reply(503, {"Retry-After": "Wed, 01 Jan 2025 00:00:00 GMT"})
    server.replies["/junk"] = Reply(503, {"Retry-After": "soon"})

    # Then the delay is measured from `now`, never negative, and absent when unreadable
    assert caller.call(WebhookRequest(server.url("/later")), now=NOW).retry_after == 90.0
    assert caller.call(WebhookRequest(server.url("/past")), now=NOW).retry_after == 0.0
    assert caller.call(WebhookRequest(server.url("/junk")), now=NOW).retry_after is None


def test_a_slow_endpoint_times_out_as_a_retry(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    # Given an endpoint that takes longer than the request's timeout
    server.replies["/slow"] = Reply(delay=1.0)

    # When it is called with timeout=0.3
    started = time.monotonic()
    outcome = caller.call(WebhookRequest(server.url("/slow"), timeout=0.3), now=NOW)

    # Then the caller gives up in time and asks for a retry
    assert time.monotonic() - started < 0.9
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert outcome.error is not None and outcome.error.startswith("timed out after 0.3 s")


def test_a_refused_connection_is_a_retry(caller: HttpWebhookCaller) -> None:
    # Given a port nobody listens on
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    outcome = caller.call(WebhookRequest(f"http://127.0.0.1:{port}/"), now=NOW)

    assert (outcome.kind, outcome.status, outcome.response_body) == ("retry", None, None)
    assert outcome.error is not None and outcome.error.startswith("could not reach 127.0.0.1")


def test_only_the_start_of_a_long_response_body_is_kept(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    server.replies["/big"] = Reply(500, body=b"x" * 100_000)
    outcome = caller.call(WebhookRequest(server.url("/big")), now=NOW)
    assert outcome.kind == "retry" and outcome.response_body == "x" * 2_000


def test_cookies_from_one_call_are_not_sent_on_the_next(
    server: ScriptedServer, caller: HttpWebhookCaller
) -> None:
    server.replies["/login"] = Reply(headers={"Set-Cookie": "session=abc; Path=/"})
    caller.call(WebhookRequest(server.url("/login")), now=NOW)
    caller.call(WebhookRequest(server.url("/next")), now=NOW)
    assert "cookie" not in server.received[1].headers


def test_one_caller_serves_a_thread_pool(server: ScriptedServer, caller: HttpWebhookCaller) -> None:
    # When 8 threads make 32 calls through one caller
    requests = [WebhookRequest(server.url(f"/n/{i}"), idempotency_key=str(i)) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda r: caller.call(r, now=NOW), requests))

    # Then every call succeeds and arrives once
    assert {o.kind for o in outcomes} == {"ok"}
    assert sorted(r.headers["idempotency-key"] for r in server.received) == sorted(
        str(i) for i in range(32)
    )


UNSENDABLE = [
    (WebhookRequest("ftp://files.example/drop"), "must be http:// or https://"),
    (WebhookRequest("crm.example/hook"), "must be http:// or https://"),
    (WebhookRequest("http:///no-host"), "must be http:// or https://"),
    (WebhookRequest("http://crm example/"), "contains whitespace"),
    (WebhookRequest("http://[::1/"), "is invalid"),
    (WebhookRequest("http://127.0.0.1/", "TRACE"), "method 'TRACE' is not one of"),
    (WebhookRequest("http://127.0.0.1/", body={"at": object()}), "not JSON-serialisable"),
    (WebhookRequest("http://127.0.0.1/", headers={"X": "a\r\nb"}), "printable ASCII"),
    (WebhookRequest("http://127.0.0.1/", headers={"X Y": "1"}), "header name 'X Y' must be"),
    (WebhookRequest("http://127.0.0.1/", timeout=0), "timeout must be a positive"),
]


@pytest.mark.parametrize("kind", ["http", "recording"])
@pytest.mark.parametrize(("request_", "message"), UNSENDABLE)
def test_a_request_that_cannot_be_sent_fails_without_raising(
    kind: str, request_: WebhookRequest, message: str
) -> None:
    # Given the real caller or the in-memory one
    with HttpWebhookCaller() as real:
        caller: WebhookCaller = real if kind == "http" else RecordingWebhookCaller()

        # When a request that cannot be built is made
        outcome = caller.call(request_, now=NOW)

    # Then both fail it permanently, saying what is wrong
    assert (outcome.kind, outcome.status, outcome.response_body) == ("fail", None, None)
    assert outcome.error is not None and message in outcome.error


def test_recording_caller_records_requests_and_answers_in_order() -> None:
    # Given a fake scripted to fail with 503, then 429
    busy = WebhookOutcome("retry", 503, "HTTP 503 from crm.example: Service Unavailable")
    fake = RecordingWebhookCaller([busy])
    fake.queue(WebhookOutcome("retry", 429, "HTTP 429", retry_after=5.0))
    request = WebhookRequest("https://crm.example/hook", body={"a": 1})

    # When it is called four times, once with a request that cannot be sent
    outcomes = [fake.call(request, now=NOW) for _ in range(2)]
    bad = fake.call(WebhookRequest("ftp://x/"), now=NOW)
    outcomes.append(fake.call(request, now=NOW))

    # Then the scripted answers come first, then ok 200, and every request is recorded
    assert [(o.kind, o.status) for o in outcomes] == [("retry", 503), ("retry", 429), ("ok", 200)]
    assert bad.kind == "fail"
    assert fake.requests == [request, request, WebhookRequest("ftp://x/"), request]


def test_recording_caller_is_safe_across_threads() -> None:
    fake = RecordingWebhookCaller([WebhookOutcome("fail", 400)] * 50)
    request = WebhookRequest("https://crm.example/hook")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: fake.call(request, now=NOW), range(200)))
    assert [o.kind for o in outcomes].count("fail") == 50 and len(fake.requests) == 200


def test_verify_accepts_rotated_secrets_and_rejects_tampering_and_old_timestamps() -> None:
    # Given a body signed at NOW
    body = b'{"a":1}'
    header = sign(SECRET, NOW, body)
    old = sign("whsec_old", NOW, body).split(",")[1]

    # Then it verifies within the tolerance, also next to a signature with a retired secret
    assert verify(SECRET, header, body, now=NOW + 300)
    assert verify(SECRET, f"{header.split(',')[0]},{old},{header.split(',')[1]}", body, now=NOW)
    # and nothing else does
    assert not verify(SECRET, header, b'{"a":2}', now=NOW)
    assert not verify("whsec_wrong", header, body, now=NOW)
    assert not verify(SECRET, header, body, now=NOW + 301)
    assert not verify(SECRET, header, body, now=NOW - 301)
    assert not verify(SECRET, header, body, now=NOW + 60, tolerance=30)
    for malformed in ["", f"t={NOW}", header.split(",")[1], f"t=soon,{header.split(',')[1]}"]:
        assert not verify(SECRET, malformed, body, now=NOW)
    assert not verify(SECRET, f"t={NOW},v1=é", body, now=NOW)


def test_backoff_grows_to_the_cap_with_deterministic_jitter() -> None:
    # Given the bounds min(cap, base * 2**(n-1)) for retries 1..40
    bounds = [min(3600.0, 30.0 * 2 ** (n - 1)) for n in range(1, 41)]
    assert bounds == sorted(bounds) and bounds[-1] == 3600.0

    for n, bound in enumerate(bounds, start=1):
        # Then each delay is within [0.5, 1.0] of its bound and the same on every computation
        delay = backoff(n, key="journey-7:step-3:contact-9")
        assert 0.5 * bound <= delay <= bound
        assert delay == backoff(n, key="journey-7:step-3:contact-9")

    # and different keys spread out instead of retrying in lockstep
    delays = {backoff(3, key=f"contact-{i}") for i in range(100)}
    assert len(delays) >= 95
    assert min(delays) >= 60.0 and max(delays) <= 120.0
    assert 0.5 <= backoff(10_000, base=1.0, cap=10.0) / 10.0 <= 1.0
    with pytest.raises(ValueError):
        backoff(0)
