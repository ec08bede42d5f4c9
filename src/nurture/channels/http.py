"""What the HTTP providers share: one pooled client each, and how an answer is read.

Every HTTP adapter turns the same things into the same results: a transport error or a
timeout is a Retry (the request may not have arrived), 429 is a Retry that asks us to slow
down (with the provider's Retry-After), 408 and 5xx are Retry, any other 4xx is a Failed
carrying the provider's own words. Provider modules add their specific codes on top.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import orjson

from nurture.channels.base import Failed, Retry
from nurture.webhooks import _retry_after

USER_AGENT = "Nurture-Channels/1"
ERROR_CHARS = 500


def client(*, timeout: float, max_connections: int = 10) -> httpx.Client:
    """A pooled client that keeps connections open between batches, reads no proxy
    settings from the environment (settings.py is its only reader) and keeps no cookies."""
    return httpx.Client(
        headers={"User-Agent": USER_AGENT},
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def post(
    http: httpx.Client,
    provider: str,
    url: str,
    *,
    content: bytes | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> httpx.Response | Retry | Failed:
    """POST and return the response, or the Result for a request that got no answer."""
    body = orjson.dumps(json) if json is not None else content
    merged = dict(headers or {})
    if json is not None:
        merged["Content-Type"] = "application/json"
    try:
        return http.post(
            url,
            content=body,
            data=data,
            headers=merged,
            auth=httpx.BasicAuth(*auth) if auth else httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.TimeoutException:
        return Retry(f"{provider}: no answer within {http.timeout.read} s")
    except httpx.LocalProtocolError as exc:
        return Failed(f"{provider}: the request could not be sent: {exc}", f"{provider}_request")
    except httpx.TransportError as exc:
        return Retry(f"{provider}: could not reach {httpx.URL(url).host}: {exc}")


def body_json(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when it has none."""
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def short(text: str) -> str:
    """Provider text cut to a length a person can read in a list of failures."""
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def after(response: httpx.Response, now: Callable[[], datetime]) -> float | None:
    """The answer's Retry-After in seconds (delta-seconds or an HTTP date), if any."""
    return _retry_after(response.headers.get("Retry-After"), int(now().timestamp()))


def classify(
    response: httpx.Response,
    provider: str,
    message: str | None,
    now: Callable[[], datetime],
    *,
    bounce: bool = False,
    code: str | None = None,
) -> Retry | Failed:
    """The generic reading of an unsuccessful answer; `message` is the provider's own
    explanation when the caller found one in the body."""
    status = response.status_code
    explanation = short(message or response.text or response.reason_phrase or "no reason given")
    error = f"{provider} answered HTTP {status}: {explanation}"
    wait = after(response, now)
    if status == 429:
        return Retry(error, after=wait, throttled=True)
    if status == 408 or status >= 500:
        return Retry(error, after=wait)
    if status == 401:
        # Bad credentials are the operator's to fix; the messages wait instead of failing.
        return Retry(f"{error} (check the credentials in the channel settings)", after=wait)
    return Failed(error, code or f"{provider}_{status}", bounce)
