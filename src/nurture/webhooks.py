"""Signed outgoing webhooks: the one HTTP caller behind the journey steps `webhook` and `notify`.

Bodies are signed with the Stripe scheme (`t=<unix seconds>,v1=<hex HMAC-SHA256>`), so
receivers can reuse familiar code. A call never raises for anything the request or the network
can get wrong: it returns a `WebhookOutcome`, and the caller decides whether to retry and when
(see `backoff`). Call outside any database transaction; the same `idempotency_key` on every
retry lets the receiver drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Literal, Protocol

import httpx
import orjson

SIGNATURE_HEADER = "Nurture-Signature"
USER_AGENT = "Nurture-Webhooks/1"
METHODS = frozenset({"POST", "PUT", "PATCH", "GET", "DELETE"})
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BODY_CHARS = 2_000
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 header name


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t." + body>`."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """True when one of the header's v1= signatures matches and its timestamp is within
    `tolerance` seconds of `now` (several v1= values allow rotating the secret)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in candidates)


@dataclass(frozen=True)
class WebhookRequest:
    """One HTTP call to make; the body is sent as JSON."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    secret: str | None = None
    timeout: float = 10.0
    idempotency_key: str | None = None


@dataclass(frozen=True)
class WebhookOutcome:
    """What came of a call: ok, worth retrying, or a permanent failure."""

    kind: Literal["ok", "retry", "fail"]
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    response_body: str | None = None


class WebhookCaller(Protocol):
    """Makes webhook calls; `now` (unix seconds, from the Clock) is the signing time."""

    def call(self, request: WebhookRequest, *, now: int) -> WebhookOutcome: ...


@dataclass(frozen=True)
class _Prepared:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    content: bytes | None


def _fail(error: str) -> WebhookOutcome:
    return WebhookOutcome("fail", None, error)


def _prepare(request: WebhookRequest, now: int) -> _Prepared | WebhookOutcome:
    """The exact method, URL, headers and bytes to send, or a 'fail' saying what is wrong."""
    method = request.method.upper()
    if method not in METHODS:
        return _fail(f"method {request.method!r} is not one of {', '.join(sorted(METHODS))}")
    if any(ch.isspace() for ch in request.url):
        return _fail(f"webhook URL {request.url!r} contains whitespace")
    try:
        url = httpx.URL(request.url)
    except httpx.InvalidURL as exc:
        return _fail(f"webhook URL {request.url!r} is invalid: {exc}")
    if url.scheme not in ("http", "https") or not url.host:
        return _fail(f"webhook URL {request.url!r} must be http:// or https:// and name a host")
    if not request.timeout > 0:
        return _fail(f"timeout must be a positive number of seconds, got {request.timeout!r}")
    for name, value in request.headers.items():
        if not (isinstance(name, str) and _TOKEN.fullmatch(name)):
            return _fail(f"header name {name!r} must be letters, digits and !#$%&'*+-.^_`|~")
        if not (isinstance(value, str) and value.isascii() and value.isprintable()):
            return _fail(f"header {name!r} must be printable ASCII text on one line")
    content = None
    if request.body is not None:
        try:
            content = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:
            return _fail(f"webhook body is not JSON-serialisable: {exc}")
    headers = httpx.Headers(dict(request.headers))
    if content is not None:
        headers["Content-Type"] = "application/json"
    if request.idempotency_key is not None:
        headers["Idempotency-Key"] = request.idempotency_key
    if request.secret is not None:
        headers[SIGNATURE_HEADER] = sign(request.secret, now, content or b"")
    return _Prepared(method, url, headers, content)


class HttpWebhookCaller:
    """The real caller: one pooled httpx.Client, safe to share between threads. Follows no
    redirects, keeps no cookies and reads no proxy settings from the environment."""

    def __init__(self, *, max_connections: int = 20) -> None:
        self._client = httpx.Client(
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            trust_env=False,  # settings.py is the only reader of the environment
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # calls stand alone
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def call(self, request: WebhookRequest, *, now: int) -> WebhookOutcome:
        """Send `request`, signed at `now`, and classify the answer."""
        prepared = _prepare(request, now)
        if isinstance(prepared, WebhookOutcome):
            return prepared
        host = prepared.url.host
        try:
            with self._client.stream(
                prepared.method,
                prepared.url,
                headers=prepared.headers,
                content=prepared.content,
                timeout=request.timeout,
            ) as response:
                body = _read_start(response, request.timeout)
        except httpx.TimeoutException:
            return WebhookOutcome("retry", None, f"timed out after {request.timeout} s ({host})")
        except httpx.LocalProtocolError as exc:
            return _fail(f"could not send the request to {host}: {exc}")
        except httpx.TransportError as exc:
            return WebhookOutcome("retry", None, f"could not reach {host}: {exc}")
        return _classify(response, body, host, now)

    def close(self) -> None:
        """Close pooled connections; the caller cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> HttpWebhookCaller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_start(response: httpx.Response, timeout: float) -> str:
    """The first BODY_CHARS characters of the body; the rest is never downloaded."""
    # The body is only kept for the record, so a slow or broken one must not hold up the
    # worker past its timeout: monotonic time measures this I/O, it is not business time.
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= 4 * BODY_CHARS or time.monotonic() > deadline:
                break
    except httpx.HTTPError:
        pass  # the status already tells what happened
    return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")[:BODY_CHARS]


def _classify(response: httpx.Response, body: str, host: str, now: int) -> WebhookOutcome:
    status = response.status_code
    retry_after = _retry_after(response.headers.get("Retry-After"), now)
    if 200 <= status < 300:
        return WebhookOutcome("ok", status, None, retry_after, body)
    if 300 <= status < 400:
        location = response.headers.get("Location", "(no Location header)")
        error = f"HTTP {status} from {host}: redirects are not followed; use the URL {location}"
    else:
        error = f"HTTP {status} from {host}: {response.reason_phrase or 'no reason given'}"
    kind: Literal["retry", "fail"] = "retry" if status in RETRY_STATUSES else "fail"
    return WebhookOutcome(kind, status, error, retry_after, body)


def _retry_after(value: str | None, now: int) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP-date relative to `now`."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # "-0000" means UTC with no claim about local time
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


_OK = WebhookOutcome("ok", 200, None, None, "")


class RecordingWebhookCaller:
    """In-memory caller for development and tests: records every request and answers with
    the queued outcomes in order, then `otherwise` (ok 200). Requests the real caller could
    not send fail here the same way, without using up a queued outcome."""

    def __init__(
        self, outcomes: Iterable[WebhookOutcome] = (), *, otherwise: WebhookOutcome = _OK
    ) -> None:
        self._lock = threading.Lock()
        self._outcomes = deque(outcomes)
        self._otherwise = otherwise
        self._requests: list[WebhookRequest] = []

    def call(self, request: WebhookRequest, *, now: int) -> WebhookOutcome:
        """Record `request` and answer with the next outcome."""
        prepared = _prepare(request, now)
        with self._lock:
            self._requests.append(request)
            if isinstance(prepared, WebhookOutcome):
                return prepared
            return self._outcomes.popleft() if self._outcomes else self._otherwise

    def queue(self, *outcomes: WebhookOutcome) -> None:
        """Answer the next calls with `outcomes`, after any already queued."""
        with self._lock:
            self._outcomes.extend(outcomes)

    @property
    def requests(self) -> list[WebhookRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)


def backoff(attempt: int, *, base: float = 30.0, cap: float = 3600.0, key: str = "") -> float:
    """Seconds to wait before retry number `attempt` (from 1): base * 2**(attempt - 1), capped
    at `cap`, times a jitter in [0.5, 1.0) that hashes (key, attempt). A restarted worker
    computes the same delay, and many failures at once do not retry in lockstep."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1000))
    digest = hashlib.sha256(f"{key}\x00{attempt}".encode()).digest()
    return ceiling * (0.5 + 0.5 * int.from_bytes(digest[:8], "big") / 2**64)
