"""The journey inbox: events journeys react to, queued in the transaction that stored
them (ingest, or evaluation's system events), consumed in order by the journey worker.

Only events some journey reacts to are queued: the names come from every version of
every journey not archived, re-read when a journey is published or changes status.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from nurture.journeys.matching import interest
from nurture.journeys.model import parse_journey
from nurture.journeys.store import COUNTER
from nurture.store import tables as t
from nurture.store.bulk import insert_rows
from nurture.store.counters import counter

_cache: weakref.WeakKeyDictionary[Engine, tuple[int, frozenset[tuple[str, str]]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def interesting(conn: Connection) -> frozenset[tuple[str, str]]:
    """(type, name) of every event some live journey reacts to."""
    version = counter(conn, COUNTER)
    with _lock:
        cached = _cache.get(conn.engine)
    if cached is not None and cached[0] == version:
        return cached[1]
    j, v = t.journeys.c, t.journey_versions.c
    names: set[tuple[str, str]] = set()
    rows = conn.execute(
        select(v.body).join(t.journeys, j.key == v.journey_key).where(j.status != "archived")
    )
    for (body,) in rows:
        names |= interest(parse_journey(body))
    found = frozenset(names)
    with _lock:
        _cache[conn.engine] = (version, found)
    return found


def offer(conn: Connection, events: Iterable[Mapping[str, Any]], now: datetime) -> int:
    """Queue the events (rows as stored in `events`) that some journey reacts to;
    returns how many were queued. Runs inside the caller's transaction."""
    wanted = interesting(conn)
    if not wanted:
        return 0
    rows = [
        {"message_id": e["message_id"], "contact_id": e["contact_id"], "queued_at": now}
        for e in events
        if (e["type"], e["event"]) in wanted or (e["type"], "*") in wanted
    ]
    return insert_rows(conn, t.journey_inbox, rows)
