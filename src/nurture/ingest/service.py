"""The ingest service: parse a batch, store the valid messages, keep the rejected ones.

`parse_batch` is pure (no I/O) and runs on the caller's thread. `store` runs in one
write transaction and is what the writer (see `writer.py`) calls, possibly with
several batches at once: one commit for many requests is how SQLite keeps up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Connection, insert, select

from nurture.contacts.profile import build_profile
from nurture.ingest.identity import ConcurrentWrite, Resolver
from nurture.ingest.messages import Message, MessageError, parse_message
from nurture.journeys.inbox import offer as offer_to_journeys
from nurture.segments.queue import Due, queue_evaluations
from nurture.store import tables as t
from nurture.store.bulk import insert_rows, one_of

_CHUNK = 500


class DuplicateFound(ConcurrentWrite):
    """A message of the transaction was already stored; run again with the check."""


@dataclass(slots=True)
class Rejection:
    """One message that was not stored, and why; kept raw in `rejected_events`."""

    index: int | None
    message_id: str | None
    code: str
    path: str | None
    message: str
    raw: str | None
    size: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "messageId": self.message_id,
            "code": self.code,
            "path": self.path,
            "message": self.message,
        }


@dataclass
class ParsedBatch:
    messages: list[Message] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": True,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.to_dict() for r in self.rejected],
        }


_ENCODED = frozenset({"properties", "traits", "context"})


def _encode(m: Message) -> dict[str, str | None]:
    _prepare(m)
    assert m.encoded is not None
    return m.encoded


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _prepare(m: Message) -> None:
    """Work the write transaction would otherwise do, done here while parsing, which
    runs alongside the writer: JSON encoding, and validating reserved traits (the
    results are cached, so the writer finds them ready)."""
    traits = m.traits if m.type in ("identify", "group") else None
    m.encoded = {
        "properties": _json(m.properties),
        "traits": _json(traits),
        "context": _json(m.context),
    }
    if m.type == "identify" and m.traits:
        build_profile(m.traits, context=m.context)


def _nul_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return here
            found = _nul_path(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _raw_text(raw: Any) -> tuple[str, int]:
    try:
        data = orjson.dumps(raw)
    except TypeError:
        data = repr(raw).encode()
    return data.decode(), len(data)


def parse_batch(
    raws: list[Any],
    *,
    received_at: datetime,
    source: str,
    max_message_bytes: int,
    default_type: str | None = None,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    path_prefix: str = "batch",
) -> ParsedBatch:
    """Validate each message on its own; never raises for a bad message."""
    out = ParsedBatch()
    envelope: dict[str, Any] = {}
    if batch_sent_at is not None:
        envelope["sentAt"] = batch_sent_at.isoformat()
    if batch_context:
        envelope["context"] = batch_context
    for index, raw in enumerate(raws):
        text, size = _raw_text(raw)
        if envelope:
            # Keep what the batch said for all its messages, so that a replay of this one
            # message computes the same timestamp and context.
            text = _raw_text({"batch": [raw], **envelope})[0]
        message_id = raw.get("messageId") if isinstance(raw, dict) else None
        message_id = str(message_id)[:255] if message_id is not None else None
        prefix = f"{path_prefix}[{index}]" if path_prefix else ""
        nul = _nul_path(raw) if "\\u0000" in text else None
        if nul is not None:
            path = ".".join(p for p in (prefix, nul) if p) or None
            out.rejections.append(
                Rejection(
                    index,
                    message_id,
                    "invalid_character",
                    path,
                    "contains a NUL character (\\u0000), which no text field may hold",
                    text,
                    size,
                    source,
                )
            )
            continue
        if size > max_message_bytes:
            out.rejections.append(
                Rejection(
                    index,
                    message_id,
                    "message_too_large",
                    prefix or None,
                    f"message is {size} bytes; the limit is {max_message_bytes}",
                    text,
                    size,
                    source,
                )
            )
            continue
        try:
            message = parse_message(
                raw,
                received_at=received_at,
                default_type=default_type,
                batch_sent_at=batch_sent_at,
                batch_context=batch_context,
            )
        except MessageError as exc:
            path = ".".join(p for p in (prefix, exc.path) if p) or None
            out.rejections.append(
                Rejection(index, message_id, exc.code, path, exc.message, text, size, source)
            )
            continue
        _prepare(message)
        out.messages.append(message)
    return out


class IngestStore:
    """Writes parsed messages inside a transaction the caller owns."""

    def __init__(self, default_region: str | None = None) -> None:
        self.default_region = default_region

    def store(
        self,
        conn: Connection,
        messages: list[Message],
        now: datetime,
        *,
        check: bool = True,
        due: Due | None = None,
    ) -> set[str]:
        """Store `messages` (already valid); returns the message ids stored now.
        A message whose id is stored already, or repeats earlier in the list, is skipped.
        The contacts to evaluate are queued, or with `due` added to it: the caller then
        queues them (`Due.queue`) in this transaction, less those it evaluated itself.

        With `check=False` the stored ids are not looked up first: if one turns out to be
        stored already (the insert takes fewer rows than it was given), DuplicateFound is
        raised and the caller rolls back and runs again with `check=True`. Retries are the
        exception, so this saves a lookup per message in the common case."""
        unique: dict[str, Message] = {}
        for m in messages:
            unique.setdefault(m.message_id, m)
        ids = list(unique) if check else []
        for i in range(0, len(ids), _CHUNK):
            seen = conn.execute(
                select(t.events.c.message_id).where(
                    one_of(conn, t.events.c.message_id, ids[i : i + _CHUNK])
                )
            ).scalars()
            for message_id in seen:
                del unique[message_id]
        fresh = list(unique.values())
        if not fresh:
            return set()

        resolver = Resolver(conn, now, self.default_region)
        resolver.prefetch(fresh)
        keys = []
        groups: list[tuple[Message, int]] = []
        for m in fresh:
            key = resolver.resolve(m)
            keys.append(key)
            if m.type == "identify" and m.traits is not None:
                resolver.apply_traits(key, m.traits, m.context)
            elif m.type == "group":
                groups.append((m, key))
        resolver.flush_contacts()

        rows = [
            {
                "message_id": m.message_id,
                "type": m.type,
                "event": m.event,
                "contact_id": resolver.real_id(key),
                "user_id": m.user_id,
                "anonymous_id": m.anonymous_id if m.type != "alias" else m.previous_id,
                "group_id": m.group_id,
                "timestamp": m.timestamp,
                "received_at": m.received_at,
                "sent_at": m.sent_at,
                "original_timestamp": m.original_timestamp,
                **(m.encoded or _encode(m)),
            }
            for m, key in zip(fresh, keys, strict=True)
        ]
        inserted = insert_rows(conn, t.events, rows, ignore_conflicts=True, encoded=_ENCODED)
        if inserted != len(rows):
            # A messageId is stored already: unchecked, or stored by another transaction
            # since our check. Start over so that its effects are not applied twice.
            raise DuplicateFound("a message of this batch is stored already")
        if groups:
            self._store_groups(conn, groups, resolver, now)
        offer_to_journeys(conn, rows, now)
        arrived = {
            (cast(int, row["contact_id"]), cast(str, row["type"]), cast(str, row["event"] or ""))
            for row in rows
        }
        touched = {contact for contact, _, _ in arrived} | set(resolver.merged)
        full = resolver.renewed | set(resolver.merged)
        if due is None:
            queue_evaluations(conn, touched, now, arrived=arrived, full=full)
        else:
            due.add(touched, arrived, full)
        return set(unique)

    def _store_groups(
        self,
        conn: Connection,
        groups: list[tuple[Message, int]],
        resolver: Resolver,
        now: datetime,
    ) -> None:
        a = t.accounts.c
        wanted = sorted({m.group_id for m, _ in groups if m.group_id})
        query = select(a.id, a.group_id, a.traits).where(a.group_id.in_(wanted))
        known = {row.group_id: (row.id, dict(row.traits or {})) for row in conn.execute(query)}
        changed: dict[str, dict[str, Any]] = {}
        for m, _ in groups:
            assert m.group_id is not None
            traits = changed.get(m.group_id) or dict(known.get(m.group_id, (0, {}))[1])
            for name, value in (m.traits or {}).items():
                if value is None:
                    traits.pop(name, None)
                else:
                    traits[name] = value
            changed[m.group_id] = traits
        for group_id, traits in changed.items():
            raw_name = traits.get("name")
            account_name = raw_name[:500] if isinstance(raw_name, str) else None
            if group_id in known:
                conn.execute(
                    t.accounts.update()
                    .where(a.id == known[group_id][0])
                    .values(traits=traits, name=account_name, updated_at=now)
                )
            else:
                new_id = conn.execute(
                    insert(t.accounts)
                    .values(
                        group_id=group_id,
                        traits=traits,
                        name=account_name,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(a.id)
                ).scalar_one()
                known[group_id] = (new_id, traits)
        members: dict[tuple[int, int], datetime] = {}
        for m, key in groups:
            assert m.group_id is not None
            pair = (known[m.group_id][0], resolver.real_id(key))
            members[pair] = min(m.timestamp, members.get(pair, m.timestamp))
        insert_rows(
            conn,
            t.account_members,
            [
                {"account_id": acc, "contact_id": contact, "joined_at": at}
                for (acc, contact), at in members.items()
            ],
            ignore_conflicts=True,
        )


def db_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; keep it visible as its JSON escape.
    return value.replace("\x00", "\\u0000")


def store_rejections(conn: Connection, rejections: list[Rejection], now: datetime) -> None:
    """Keep rejected input, raw, for inspection and replay."""
    if not rejections:
        return
    conn.execute(
        insert(t.rejected_events),
        [
            {
                "received_at": now,
                "source": db_text(r.source)[:500],
                "code": r.code,
                "path": db_text(r.path)[:500] if r.path else None,
                "message": db_text(r.message),
                "message_id": db_text(r.message_id)[:255] if r.message_id else None,
                "raw": db_text(r.raw) if r.raw is not None else None,
                "size": r.size,
            }
            for r in rejections
        ],
    )
