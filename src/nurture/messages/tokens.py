"""Signed, tamper-proof tokens for links in messages (open pixel, clicks, unsubscribe,
preferences, double opt-in): `payload.signature`, both base64url, HMAC-SHA256 with the
installation's secret key. A token carries what the link needs; nothing is looked up by an
id a visitor could guess or change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

from nurture.errors import NurtureError


class BadToken(NurtureError):
    code = "bad_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return _b64(digest[:18])  # 144 bits: short enough for a URL, far beyond guessing


def sign(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """A token for `payload`, valid only for `purpose` (a click token is no unsubscribe)."""
    body = _b64(orjson.dumps(payload))
    return f"{body}.{_mac(secret, purpose, body)}"


def verify(secret: str, purpose: str, token: str) -> dict[str, Any]:
    """The payload of a token signed for `purpose`; raises BadToken otherwise."""
    body, dot, mac = token.rpartition(".")
    if not dot or not hmac.compare_digest(mac, _mac(secret, purpose, body)):
        raise BadToken("the link is not valid (its signature does not match)")
    try:
        payload = orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError) as e:
        raise BadToken("the link is not valid (it cannot be read)") from e
    if not isinstance(payload, dict):
        raise BadToken("the link is not valid (it cannot be read)")
    return payload
