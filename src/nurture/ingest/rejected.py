"""Rejected input: kept raw, listed for inspection, replayed after a fix.

A replay re-runs the same validation. A message that passes is stored (or found
to be a duplicate) and its row is marked replayed; one that still fails keeps its
row, updated with the new error, so nothing is ever lost by replaying.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import func, select, update

from nurture.errors import NotFound
from nurture.ingest.messages import MessageError, parse_time
from nurture.ingest.service import ParsedBatch, db_text
from nurture.store import Database
from nurture.store import tables as t

if TYPE_CHECKING:
    from nurture.core import Nurture

_ENDPOINT_TYPES = {f"/v1/{k}": k for k in ("identify", "track", "page", "screen", "group", "alias")}


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    id: int
    received_at: datetime
    source: str
    code: str
    path: str | None
    message: str
    message_id: str | None
    raw: str | None
    size: int
    replayed_at: datetime | None
    replay_result: str | None

    def to_dict(self, *, with_raw: bool = True) -> dict[str, Any]:
        out = {
            "id": self.id,
            "receivedAt": self.received_at.isoformat(),
            "source": self.source,
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "messageId": self.message_id,
            "size": self.size,
            "replayedAt": self.replayed_at.isoformat() if self.replayed_at else None,
            "replayResult": self.replay_result,
        }
        if with_raw:
            out["raw"] = self.raw
        return out


@dataclass
class ReplayReport:
    accepted: int = 0
    duplicates: int = 0
    still_rejected: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "stillRejected": self.still_rejected,
        }


def _default_type(source: str) -> str | None:
    endpoint = source.split(" ", 1)[-1]
    return _ENDPOINT_TYPES.get(endpoint)


class RejectedStore:
    """Reads and replays the rejected-events table."""

    def __init__(self, db: Database, nurture: Nurture) -> None:
        self.db = db
        self.nurture = nurture

    def page(
        self,
        *,
        pending_only: bool = True,
        code: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[RejectedEvent]:
        r = t.rejected_events.c
        query = select(t.rejected_events).where(r.id > after_id).order_by(r.id).limit(limit)
        if pending_only:
            query = query.where(r.replayed_at.is_(None))
        if code:
            query = query.where(r.code == code)
        with self.db.read() as conn:
            return [RejectedEvent(**row._mapping) for row in conn.execute(query)]

    def count(self, *, pending_only: bool = True) -> int:
        r = t.rejected_events.c
        query = select(func.count()).select_from(t.rejected_events)
        if pending_only:
            query = query.where(r.replayed_at.is_(None))
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def get(self, rejected_id: int) -> RejectedEvent:
        with self.db.read() as conn:
            row = conn.execute(
                select(t.rejected_events).where(t.rejected_events.c.id == rejected_id)
            ).first()
        if row is None:
            raise NotFound(f"no rejected event with id {rejected_id}", path="id")
        return RejectedEvent(**row._mapping)

    def replay(self, ids: list[int] | None = None, *, code: str | None = None) -> ReplayReport:
        """Re-ingest pending rejected input (all of it, or the given ids)."""
        report = ReplayReport()
        after = 0
        while True:
            if ids is not None:
                rows = [r for r in map(self.get, ids) if r.replayed_at is None]
            else:
                rows = self.page(code=code, limit=500, after_id=after)
            if not rows:
                return report
            for row in rows:
                self._replay_one(row, report)
                after = row.id
            if ids is not None:
                return report

    def _replay_one(self, row: RejectedEvent, report: ReplayReport) -> None:
        n = self.nurture
        if row.raw is None:
            self._mark(row.id, None, "no_raw", None, "the input was too large to keep")
            report.still_rejected += 1
            return
        try:
            body = orjson.loads(row.raw)
        except orjson.JSONDecodeError as exc:
            self._mark(row.id, None, "invalid_json", None, f"still not JSON: {exc}")
            report.still_rejected += 1
            return
        source = f"replay of #{row.id}"
        if isinstance(body, dict) and isinstance(body.get("batch"), list):
            try:
                sent_at = parse_time(body.get("sentAt"), "sentAt")
            except MessageError as exc:
                self._mark(row.id, None, exc.code, exc.path, exc.message)
                report.still_rejected += 1
                return
            context = body.get("context") if isinstance(body.get("context"), dict) else None
            parsed = n.parse(
                body["batch"],
                source=source,
                path_prefix="batch",
                received_at=row.received_at,
                batch_sent_at=sent_at,
                batch_context=context,
            )
        else:
            parsed = n.parse(
                [body],
                source=source,
                default_type=_default_type(row.source),
                path_prefix="",
                received_at=row.received_at,
            )
        if parsed.rejections:
            first = parsed.rejections[0]
            # Good messages of a partly bad batch are stored; the row keeps the rest.
            if parsed.messages:
                result = n.writer.ingest(ParsedBatch(messages=parsed.messages))
                report.accepted += result.accepted
                report.duplicates += result.duplicates
            self._mark(row.id, None, first.code, first.path, first.message)
            report.still_rejected += 1
            return
        result = n.writer.ingest(ParsedBatch(messages=parsed.messages))
        report.accepted += result.accepted
        report.duplicates += result.duplicates
        outcome = "accepted" if result.accepted else "duplicate"
        self._mark(row.id, n.clock.now(), None, None, None, outcome)

    def _mark(
        self,
        rejected_id: int,
        replayed_at: datetime | None,
        code: str | None,
        path: str | None,
        message: str | None,
        outcome: str = "rejected",
    ) -> None:
        values: dict[str, Any] = {"replay_result": outcome, "replayed_at": replayed_at}
        if code is not None:
            values.update(
                code=code,
                path=db_text(path)[:500] if path else None,
                message=db_text(message or ""),
            )
        with self.db.write() as conn:
            conn.execute(
                update(t.rejected_events)
                .where(t.rejected_events.c.id == rejected_id)
                .values(**values)
            )
