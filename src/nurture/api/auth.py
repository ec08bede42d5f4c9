"""API keys from `Authorization`: HTTP Basic with the key as user name (what Segment
SDKs send) or `Bearer <key>`. Write keys may ingest; admin keys may do anything."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from nurture.errors import Forbidden, Unauthorized
from nurture.keys import KeyKind


def _secret(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


def require_key(request: Request, *allowed: KeyKind) -> KeyKind:
    """The caller's key kind, or raise 401/403."""
    secret = _secret(request.headers.get("authorization"))
    if secret is None:
        raise Unauthorized("send your key as HTTP Basic user name or as Bearer token")
    kind = request.app.state.nurture.keys.kind_of(secret)
    if kind is None:
        raise Unauthorized("the key is unknown or revoked")
    if kind != "admin" and kind not in allowed:
        raise Forbidden(f"a {kind} key cannot do this; use an admin key")
    return kind  # type: ignore[no-any-return]


def write_key(request: Request) -> KeyKind:
    """Dependency: a write or admin key."""
    return require_key(request, "write")


def admin_key(request: Request) -> KeyKind:
    """Dependency: an admin key."""
    return require_key(request, "admin")
