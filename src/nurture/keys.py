"""API keys: write keys for ingest (what Segment SDKs call a write key), admin keys
for the admin API. Only a SHA-256 of each key is stored; keys are 256-bit random
tokens, so a fast hash is enough (there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import insert, select, update

from nurture.clock import Clock
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

KeyKind = Literal["write", "admin"]
KINDS: tuple[KeyKind, ...] = ("write", "admin")
CACHE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    kind: KeyKind
    prefix: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Creates, checks and revokes keys. A check is cached for CACHE_SECONDS, so a key
    revoked by another process (the CLI) stops working everywhere within that time."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._cache: dict[str, tuple[KeyKind | None, float]] = {}

    def create(self, kind: str, name: str = "") -> tuple[ApiKey, str]:
        """Make a key; returns it and the secret, which is shown only this once."""
        if kind not in KINDS:
            raise ValidationError(f"kind must be one of {', '.join(KINDS)}", path="kind")
        secret = f"nk_{kind[0]}_{secrets.token_urlsafe(32)}"
        now = self.clock.now()
        with self.db.write() as conn:
            key_id = conn.execute(
                insert(t.api_keys)
                .values(
                    kind=kind,
                    key_hash=hash_key(secret),
                    prefix=secret[:10],
                    name=name,
                    created_at=now,
                )
                .returning(t.api_keys.c.id)
            ).scalar_one()
        return ApiKey(key_id, kind, secret[:10], name, now, None), secret

    def list_keys(self) -> list[ApiKey]:
        k = t.api_keys.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(k.id, k.kind, k.prefix, k.name, k.created_at, k.revoked_at).order_by(k.id)
            ).all()
        return [ApiKey(*row) for row in rows]

    def revoke(self, key_id: int) -> None:
        with self.db.write() as conn:
            done = conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            ).rowcount
        if not done:
            raise NotFound(f"no active key with id {key_id}", path="id")
        self.forget()

    def forget(self) -> None:
        self._cache.clear()

    def kind_of(self, secret: str) -> KeyKind | None:
        """The kind of an active key, or None when the secret matches none."""
        digest = hash_key(secret)
        now = self.clock.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        k = t.api_keys.c
        with self.db.read() as conn:
            kind = conn.execute(
                select(k.kind).where(k.key_hash == digest, k.revoked_at.is_(None))
            ).scalar()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (kind, now + CACHE_SECONDS)
        return kind

    def any_exist(self) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(t.api_keys.c.id).limit(1)).first() is not None
