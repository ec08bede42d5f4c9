"""Two server processes ingesting at once (two Nurture instances, each with its own
engine and writer) resolve identities as if there were one: no error, no duplicate
contact, every message once."""

from __future__ import annotations

import random
import threading
from typing import Any

from sqlalchemy import func, select

from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t


def _messages(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = f"u{rng.randrange(40)}"
        anon = f"a{rng.randrange(60)}"
        kind = rng.choice(["identify", "track", "track", "page", "group"])
        m: dict[str, Any] = {"type": kind, "messageId": f"s{seed}-{i}"}
        if rng.random() < 0.5:
            m["userId"] = user
        if rng.random() < 0.6 or "userId" not in m:
            m["anonymousId"] = anon
        if kind == "identify":
            m["traits"] = {f"k{rng.randrange(5)}": i}
        elif kind == "track":
            m["event"] = "E"
        elif kind == "group":
            m["groupId"] = f"g{rng.randrange(5)}"
            m.setdefault("userId", user)
        out.append(m)
    return out


def test_two_processes_ingesting_overlapping_people(
    nurture: Nurture, database_url: tuple[str, str | None]
) -> None:
    # Given a second, independent instance on the same database (as a second process)
    url, schema = database_url
    other_db = Database(url, search_path=schema, sqlite_synchronous="NORMAL")
    other = Nurture(nurture.settings, clock=nurture.clock, db=other_db).start()
    streams = [_messages(seed, 600) for seed in range(4)]
    errors: list[BaseException] = []

    # When both ingest interleaved streams about the same 40 users and 60 devices at once,
    # each stream also resent once (a client retry)
    def send(instance: Nurture, stream: list[dict[str, Any]]) -> None:
        try:
            for start in range(0, len(stream), 50):
                instance.ingest(stream[start : start + 50])
            instance.ingest(stream[:100])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(nurture if i % 2 else other, streams[i]))
        for i in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    other.stop()

    # Then nothing failed, every message is stored once, and each identity has one contact
    assert errors == []
    with nurture.db.read() as conn:
        stored = conn.execute(select(func.count()).select_from(t.events)).scalar_one()
        users = conn.execute(
            select(t.contacts.c.user_id, func.count())
            .where(t.contacts.c.user_id.is_not(None))
            .group_by(t.contacts.c.user_id)
            .having(func.count() > 1)
        ).all()
        orphans = conn.execute(
            select(func.count())
            .select_from(t.events.join(t.contacts, t.contacts.c.id == t.events.c.contact_id))
            .where(t.contacts.c.merged_into.is_not(None))
        ).scalar_one()
    assert stored == sum(len(s) for s in streams)
    assert users == []
    assert orphans == 0
