"""The reference world as a ready Nurture database, loaded fast and cached.

Importing the reference world through the real ingest path runs at 15-19k events/s: ten
minutes for 10M events, too slow to prepare segment benchmarks again and again. This
loader writes the rows an import would have left behind straight into `contacts`,
`identities`, `events`, `accounts` and `account_members`. Worker processes generate the
world's blocks (bench.generate, so the data is the reference workload) and turn each
block into finished rows; the main process only bulk-inserts them (one prepared
executemany on SQLite, COPY on PostgreSQL).

Each generated person is one contact, with the anonymous visits before its signup (as
identity resolution leaves it): contact id = person index + 1, one `user_id` identity and
one `anonymous_id` identity when a message carried one, traits merged from its identify
messages in time order and reserved traits read by the real `build_profile`. Where an
import would use the wall clock, the world's own time stands in, as if ingested live:
`received_at` = `timestamp`, a contact's `created_at`/`updated_at` = first/last seen.
Checked against `nurture import` of the same 3,000-person world, on both backends: the
same rows but for those ids and wall-clock times.

Speed: about 65 µs of CPU per event, two thirds of it in the workers (the generator
alone takes 15-27), so 10M events take about 11 minutes on the shared 2-core machine and
should take 5-6 on an idle one. That is paid once: later calls reuse the database, found
complete by the marker that `load_world` writes last in `meta`.

Library use::

    from bench.world_db import world_database
    url = world_database("sqlite", 1_000_000, None)  # built once under bench/.cache/

Command line::

    python -m bench.world_db --contacts 1000000 [--backend postgresql] [--events N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Table, UniqueConstraint, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import AddConstraint, CreateIndex, DropConstraint

from bench.generate import World, block_messages
from bench.harness import POSTGRES_URL, log
from nurture.contacts.profile import Profile, build_profile
from nurture.store import Database
from nurture.store import tables as t

VERSION = 1  # bump when the rows change: cached databases of other versions are not reused
CACHE = Path(__file__).parent / ".cache"
MARKER = "bench_world"  # the `meta` key written last: the database is complete

EVENT_COLUMNS = (
    "message_id", "type", "event", "contact_id", "user_id", "anonymous_id", "group_id",
    "timestamp", "received_at", "properties", "traits", "context",
)  # fmt: skip
CONTACT_COLUMNS = (
    "id", "user_id", "email", "phone", "country", "timezone", "locale", "traits",
    "trait_issues", "first_seen_at", "last_seen_at", "created_at", "updated_at",
)  # fmt: skip
IDENTITY_COLUMNS = ("kind", "value", "contact_id", "created_at")
ACCOUNT_COLUMNS = ("id", "group_id", "name", "traits", "created_at", "updated_at")
MEMBER_COLUMNS = ("account_id", "contact_id", "joined_at")

Rows = list[tuple[Any, ...]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class WorldInfo:
    """What a loaded world database holds, and how long it took to build."""

    url: str
    backend: str
    seed: int
    contacts: int
    events: int
    identities: int
    accounts: int
    seconds: float
    start: datetime
    end: datetime  # the end of the world's time range: "now" for segment benchmarks
    reused: bool = False

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def world_for(contacts: int, events: int | None, seed: int = World.seed) -> World:
    """The world of `contacts` people with about `events` events (default: 10 each)."""
    per = World.events_per_contact if events is None else events / contacts
    return World(contacts=contacts, seed=seed, events_per_contact=per)


# -- one block, in a worker process -------------------------------------------------------


_MINUTES: dict[str, int] = {}


def micros(stamp: str) -> int:
    """A generator timestamp (`2026-01-01T12:34:56.789Z`) as SQLite stores UTCDateTime:
    microseconds since the epoch."""
    minute = _MINUTES.get(stamp[:16])
    if minute is None:
        at = datetime.fromisoformat(stamp[:16]).replace(tzinfo=UTC)
        minute = _MINUTES[stamp[:16]] = (at - _EPOCH) // timedelta(microseconds=1)
    return minute + int(stamp[17:19]) * 1_000_000 + int(stamp[20:23]) * 1000


def _json(value: Any) -> str | None:
    # As ingest and Database's json_serializer encode JSON columns.
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("\t", "\\t")
        return escaped.replace("\n", "\\n").replace("\r", "\\r")
    return str(value)


def copy_text(rows: Rows) -> bytes:
    """Rows in PostgreSQL's COPY text format."""
    return "".join("\t".join(map(_copy_value, row)) + "\n" for row in rows).encode()


def _merge(traits: dict[str, Any], update: dict[str, Any]) -> None:
    """Shallow-merge traits as ingest does: a trait sent as null is removed."""
    for name, value in update.items():
        if value is None:
            traits.pop(name, None)
        else:
            traits[name] = value


@dataclass(slots=True)
class _Contact:
    id: int
    user_id: str
    first: Any  # stored form: microseconds (SQLite) or ISO text (PostgreSQL)
    last: Any
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] | None = None


@dataclass
class BlockRows:
    """The finished rows of one block: tuples for SQLite, COPY text for PostgreSQL.
    Group messages travel as (group_id, traits, contact_id, timestamp) and become
    accounts in the main process, since one account can span blocks."""

    contacts: Rows | bytes
    identities: Rows | bytes
    events: Rows | bytes
    groups: list[tuple[str, dict[str, Any], int, Any]]
    event_count: int


def block_rows(world: World, number: int, backend: str) -> BlockRows:
    """Block `number` of `world` as the rows an import of its messages would store."""
    return rows_of(block_messages(world, number), backend)


def rows_of(messages: list[dict[str, Any]], backend: str) -> BlockRows:
    """The rows an import of `messages` (whole people, in time order) would store."""
    owner = {
        m["anonymousId"]: m["userId"] for m in messages if "userId" in m and "anonymousId" in m
    }
    # SQLite stores UTCDateTime as microseconds; PostgreSQL's timestamptz reads the
    # generator's ISO strings as they are (and they sort as the times do).
    to_db: Any = micros if backend == "sqlite" else str
    people: dict[str, _Contact] = {}
    known: set[str] = set()
    identities: Rows = []
    events: Rows = []
    groups: list[tuple[str, dict[str, Any], int, Any]] = []
    for m in messages:
        user, anonymous, at = m.get("userId"), m.get("anonymousId"), to_db(m["timestamp"])
        key = user or owner[anonymous]  # every anonymous visitor of the world signs up
        person = people.get(key)
        if person is None:
            person = people[key] = _Contact(int(key.removeprefix("usr_")) + 1, key, at, at)
        person.last = at
        for kind, value in (("user_id", user), ("anonymous_id", anonymous)):
            if value is not None and value not in known:
                known.add(value)
                identities.append((kind, value, person.id, at))
        kind = m["type"]
        traits = m.get("traits") if kind in ("identify", "group") else None
        if kind == "identify" and traits is not None:
            _merge(person.traits, traits)
            person.context = m.get("context") or person.context
        elif kind == "group":
            groups.append((m["groupId"], traits or {}, person.id, at))
        event = m.get("event") if kind == "track" else m.get("name")
        who = (person.id, user, anonymous, m.get("groupId"), at, at)
        payload = map(_json, (m.get("properties"), traits, m.get("context")))
        events.append((m["messageId"], kind, event, *who, *payload))
    contacts: Rows = []
    for person in sorted(people.values(), key=lambda p: p.id):
        if person.traits or person.context:
            profile = build_profile(person.traits, context=person.context)
        else:
            profile = Profile()
        where = (profile.country, profile.timezone, profile.locale)
        seen = (person.first, person.last, person.first, person.last)
        row = (person.id, person.user_id, profile.email, profile.phone, *where)
        contacts.append((*row, _json(person.traits), _json(profile.issues), *seen))
    if backend == "postgresql":
        return BlockRows(
            copy_text(contacts), copy_text(identities), copy_text(events), groups, len(events)
        )
    return BlockRows(contacts, identities, events, groups, len(events))


# -- the writers ----------------------------------------------------------------------------


def _deferred(db: Database) -> list[tuple[str, str]]:
    """(drop, create) statements for what is cheaper built once, from sorted data, after
    the load than kept up row by row during it: the secondary indexes of the big tables,
    and on PostgreSQL the unique message_id constraint (SQLite cannot drop one)."""
    big = (t.events, t.contacts, t.identities)
    dialect = db.engine.dialect
    with db.read() as conn:
        have = {ix["name"] for table in big for ix in inspect(conn).get_indexes(table.name)}
        have |= {c["name"] for c in inspect(conn).get_unique_constraints("events")}
    ddl = [
        (f"DROP INDEX {ix.name}", str(CreateIndex(ix).compile(dialect=dialect)))
        for table in big
        for ix in table.indexes
        if not ix.unique and ix.name in have
    ]
    if not db.is_sqlite:
        ddl += [
            (
                str(DropConstraint(c).compile(dialect=dialect)),
                str(AddConstraint(c).compile(dialect=dialect)),
            )
            for c in t.events.constraints
            if isinstance(c, UniqueConstraint) and c.name in have
        ]
    return ddl


class _Writer:
    """Bulk inserts on one connection, outside SQLAlchemy's per-row processing: a
    prepared executemany on SQLite (without a journal: a half-built file is thrown
    away), COPY on PostgreSQL (into the schema of the URL's search_path)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        if db.is_sqlite:
            db.engine.dispose()  # leaving WAL mode needs the only connection
            self.conn: Any = sqlite3.connect(str(db.url.database), isolation_level=None)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE"):
                self.conn.execute(f"PRAGMA {pragma}")
            # 1 GiB: the message_id index takes random inserts; indexes sort in memory.
            self.conn.execute("PRAGMA cache_size=-1048576")
            self.conn.execute("PRAGMA temp_store=MEMORY")
            self.conn.execute("BEGIN")
        else:
            self.raw = db.engine.raw_connection()
            self.conn = self.raw.driver_connection
            self.conn.execute("SET synchronous_commit = off")
            self.conn.execute("SET maintenance_work_mem = '512MB'")

    def write(self, table: Table, columns: tuple[str, ...], rows: Rows | bytes) -> None:
        quote = self.db.engine.dialect.identifier_preparer.quote
        target = f"{quote(table.name)} ({', '.join(map(quote, columns))})"
        if isinstance(rows, bytes) or not self.db.is_sqlite:
            data = rows if isinstance(rows, bytes) else copy_text(rows)
            with self.conn.cursor().copy(f"COPY {target} FROM STDIN") as copy:
                copy.write(data)
        else:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {target} VALUES ({marks})", rows)

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def commit(self) -> None:
        if self.db.is_sqlite:
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN")
        else:
            self.conn.commit()

    def close(self) -> None:
        """Commit, and leave the database as the application expects to find it."""
        if self.db.is_sqlite:
            self.conn.execute("COMMIT")
            self.conn.execute("PRAGMA journal_mode=WAL")  # what Database sets anyway
            self.conn.close()
            return
        for table in ("contacts", "accounts"):  # their rows came with ids
            self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("VACUUM ANALYZE")  # as autovacuum would: visibility map, statistics
        self.raw.close()


# -- loading --------------------------------------------------------------------------------


def _accounts(groups: list[tuple[str, dict[str, Any], int, Any]]) -> tuple[Rows, Rows]:
    """Accounts and memberships from the group messages, in time order per account."""
    accounts: dict[str, list[Any]] = {}
    members: dict[tuple[str, int], Any] = {}
    for group_id, traits, contact_id, at in sorted(groups, key=lambda g: g[3]):
        account = accounts.setdefault(group_id, [len(accounts) + 1, {}, at, at])
        _merge(account[1], traits)
        account[3] = at
        members.setdefault((group_id, contact_id), at)
    account_rows: Rows = []
    for group_id, (number, traits, created, updated) in accounts.items():
        title = traits.get("name")
        title = title[:500] if isinstance(title, str) else None
        account_rows.append((number, group_id, title, _json(traits), created, updated))
    member_rows: Rows = [(accounts[g][0], c, at) for (g, c), at in members.items()]
    return account_rows, member_rows


def _generate(pool: Pool, world: World, backend: str, *, window: int) -> Iterator[BlockRows]:
    """The world's blocks in order, generated ahead by at most `window` blocks (so memory
    stays flat when the writer is the slower side)."""
    pending: deque[AsyncResult[BlockRows]] = deque()
    for number in range(world.blocks):
        pending.append(pool.apply_async(block_rows, (world, number, backend)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def load_world(
    url: str,
    contacts: int,
    events: int | None = None,
    *,
    seed: int = World.seed,
    progress: bool = True,
    workers: int | None = None,
    defer_indexes: bool = True,
) -> WorldInfo:
    """Fill the empty Nurture database at `url` (migrated here) with the reference world
    of `contacts` people and about `events` events; writes the `meta` marker last."""
    world = world_for(contacts, events, seed)
    started = time.perf_counter()
    db = Database(url)
    db.migrate()
    with db.read() as conn:
        if conn.execute(text("SELECT count(*) FROM contacts")).scalar_one():
            raise RuntimeError(f"{url} already holds contacts; load_world needs an empty one")
    deferred = _deferred(db) if defer_indexes else []
    writer = _Writer(db)
    for drop, _ in deferred:
        writer.execute(drop)
    workers = workers or os.cpu_count() or 2
    counts = {"contacts": 0, "events": 0, "identities": 0}
    groups: list[tuple[str, dict[str, Any], int, Any]] = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        blocks = _generate(pool, world, db.backend, window=2 * workers)
        for done, rows in enumerate(blocks, 1):
            writer.write(t.contacts, CONTACT_COLUMNS, rows.contacts)
            writer.write(t.identities, IDENTITY_COLUMNS, rows.identities)
            writer.write(t.events, EVENT_COLUMNS, rows.events)
            groups.extend(rows.groups)
            counts["events"] += rows.event_count
            if done % 50 == 0:
                writer.commit()
            if progress and done % max(world.blocks // 20, 1) == 0:
                seconds = time.perf_counter() - started
                log(
                    f"world: {done}/{world.blocks} blocks, {counts['events']:,} events, "
                    f"{counts['events'] / seconds:,.0f} events/s"
                )
    account_rows, member_rows = _accounts(groups)
    writer.write(t.accounts, ACCOUNT_COLUMNS, account_rows)
    writer.write(t.account_members, MEMBER_COLUMNS, member_rows)
    writer.commit()
    if progress and deferred:
        log(f"world: creating indexes ({time.perf_counter() - started:.0f}s so far)")
    for _, create in deferred:
        writer.execute(create)
    writer.close()
    with db.write() as conn:
        for table in ("contacts", "identities"):
            counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        info = WorldInfo(
            url=url,
            backend=db.backend,
            seed=seed,
            contacts=counts["contacts"],
            events=counts["events"],
            identities=counts["identities"],
            accounts=len(account_rows),
            seconds=time.perf_counter() - started,
            start=world.start,
            end=world.start + timedelta(days=world.days),
        )
        marker = {**info.__dict__, "version": VERSION, "requested_events": events}
        conn.execute(
            t.meta.insert().values(key=MARKER, value=orjson.dumps(marker, default=str).decode())
        )
    db.dispose()
    return info


# -- the cache ------------------------------------------------------------------------------


def _name(contacts: int, events: int | None, seed: int) -> str:
    return f"world_v{VERSION}_s{seed}_c{contacts}_e{events if events is not None else 'd'}"


def postgres_url(schema: str) -> str:
    """The benchmark PostgreSQL URL with `schema` as its search path."""
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def reuse(url: str) -> WorldInfo | None:
    """The world completely loaded at `url` (migrated to the newest schema), or None."""
    db = Database(url)
    try:
        value = db.meta_value(MARKER)
    except Exception:  # no such file, schema or table: nothing loaded there
        value = None
    data = orjson.loads(value) if value is not None else {}
    try:
        if data.pop("version", None) != VERSION:
            return None
        db.migrate()  # tables added since it was built
    finally:
        db.dispose()
    data.pop("requested_events")
    for key in ("start", "end"):
        data[key] = datetime.fromisoformat(data[key])
    return WorldInfo(**{**data, "url": url, "reused": True})


def world_info(backend: str, contacts: int, events: int | None, **kwargs: Any) -> WorldInfo:
    """The cached world database for these parameters, built first when missing."""
    seed = kwargs.pop("seed", World.seed)
    name = _name(contacts, events, seed)
    if backend == "sqlite":
        path = CACHE / f"{name}.db"
        url = f"sqlite:///{path}"
        if path.exists():
            found = reuse(url)
            if found is not None:
                return found
            path.unlink()  # an older version
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{name}.part{os.getpid()}.db")
        partial.unlink(missing_ok=True)
        info = load_world(f"sqlite:///{partial}", contacts, events, seed=seed, **kwargs)
        partial.replace(path)
        info.url = url
        return info
    url = postgres_url(name)
    found = reuse(url)
    if found is not None:
        return found
    part = f"{name}_part"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            for schema in (name, part):
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {part}"))
        info = load_world(postgres_url(part), contacts, events, seed=seed, **kwargs)
        with admin.begin() as conn:
            conn.execute(text(f"ALTER SCHEMA {part} RENAME TO {name}"))
    finally:
        admin.dispose()
    info.url = url
    return info


def world_database(
    backend: str, contacts: int, events: int | None = None, *, seed: int = World.seed
) -> str:
    """The URL of a ready database holding the world (built once, then reused)."""
    return world_info(backend, contacts, events, seed=seed).url


def main(argv: list[str] | None = None) -> int:
    """Command line: build (or reuse) a world database and print what it holds."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.world_db", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--contacts", type=int, default=World.contacts)
    parser.add_argument("--events", type=int, help="about this many events (default: 10 each)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=World.seed)
    parser.add_argument("--workers", type=int, help="generating processes (default: all cores)")
    parser.add_argument(
        "--keep-indexes", action="store_true", help="insert with every index in place"
    )
    args = parser.parse_args(argv)
    info = world_info(
        args.backend,
        args.contacts,
        args.events,
        seed=args.seed,
        workers=args.workers,
        defer_indexes=not args.keep_indexes,
    )
    print(f"{'reused' if info.reused else 'built'} {info.url}")
    print(
        f"{info.contacts:,} contacts, {info.identities:,} identities, {info.accounts:,} "
        f"accounts, {info.events:,} events ({info.start:%Y-%m-%d} to {info.end:%Y-%m-%d})"
    )
    print(f"built in {info.seconds:.1f}s: {info.events_per_s:,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
