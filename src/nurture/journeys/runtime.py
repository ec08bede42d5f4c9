"""The journey runtime: enrolments are rows, and workers move them on.

Three kinds of work, each in its own transactions:

- the inbox: events journeys react to start enrolments (triggers), convert them (goals),
  end them (exit rules) and end waits for events, in event order;
- due steps: enrolments whose `due_at` has come run their current step, one step per
  enrolment per transaction, writing the outbox row, the step log and the new position
  together; a step that fails is retried with backoff and then parked as failed;
- HTTP calls (webhook steps): leased in one transaction, made outside any, recorded in
  another, with an idempotency key that names the step run.

On PostgreSQL any number of workers share the work (`FOR UPDATE SKIP LOCKED`; the inbox
is consumed by one worker at a time so that each contact's events keep their order). On
SQLite the process's single writer runs them one after another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from nurture.analytics.winners import SplitWinners
from nurture.clock import Clock
from nurture.conditions.facts import ContactFacts, load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import Condition
from nurture.journeys import interpreter as ip
from nurture.journeys.entry import Entries
from nurture.journeys.model import Journey, UpdateStep
from nurture.journeys.reactions import Reactions
from nurture.journeys.store import Versions
from nurture.journeys.traits import apply_update
from nurture.lifecycle.scoring import POINTS_EVENT
from nurture.segments.engine import Engine
from nurture.segments.queue import queue_evaluations
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_batch, insert_rows, one_of, update_batch
from nurture.webhooks import WebhookCaller, WebhookOutcome, WebhookRequest, backoff

log = logging.getLogger("nurture.journeys")
LEASE_MARGIN = timedelta(seconds=30)


@dataclass
class Options:
    default_timezone: str = "UTC"
    step_attempts: int = 5
    batch: int = 500
    secret: Callable[[str], str | None] = lambda _name: None


@dataclass
class _Writes:
    """What one transaction of due steps writes."""

    moves: list[dict[str, Any]] = field(default_factory=list)  # enrolments: `_key` is the id
    steps: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    updates: dict[int, list[UpdateStep]] = field(default_factory=dict)


class JourneyRuntime:
    """Runs journeys for one database; thread-safe, one per process."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        segments: Engine,
        webhooks: WebhookCaller,
        options: Options | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.segments = segments
        self.webhooks = webhooks
        self.options = options or Options()
        self.versions = Versions()
        self.entries = Entries(self)
        self.reactions = Reactions(self)
        # Called after each committed batch of due steps with (due_at, ran_at) pairs.
        self.on_steps: list[Callable[[list[tuple[datetime, datetime]]], None]] = []
        # Split steps' automatic winners (analytics/winners.py).
        self.winners = SplitWinners()

    # -- shared helpers ------------------------------------------------------------------
    def journey(self, conn: Connection, key: str, version: int) -> Journey:
        return self.versions.get(conn, key, version)

    def contacts(self, conn: Connection, ids: list[int]) -> dict[int, ip.Contact]:
        """Contacts by id; a merged contact's id maps to the contact it was merged into
        (following chains of merges)."""
        c = t.contacts.c
        out: dict[int, ip.Contact] = {}
        merged: dict[int, int] = {}
        wanted = sorted(set(ids))
        if not wanted:
            return out
        query = select(c.id, c.user_id, c.email, c.phone, c.timezone, c.traits, c.merged_into)
        for id_, user_id, email, phone, tz, traits, merged_into in conn.execute(
            query.where(one_of(conn, c.id, wanted))
        ).all():
            if merged_into is not None:
                merged[id_] = merged_into
            else:
                out[id_] = ip.Contact(id_, tz, email, phone, user_id, traits or {})
        survivors = self.contacts(conn, sorted(set(merged.values()) - set(out)))
        out.update(survivors)
        for old, new in merged.items():
            if new in out:
                out[old] = out[new]
        return out

    def holds_for(
        self, conn: Connection, now: datetime
    ) -> Callable[[int], Callable[[Condition], bool]]:
        """A condition tester per contact, facts loaded once per contact and call; the
        definitions are read when a first condition is tested (most steps test none)."""
        evaluators: list[Evaluator] = []
        cache: dict[int, ContactFacts | None] = {}

        def evaluator() -> Evaluator:
            if not evaluators:
                registry = self.segments.registry(conn)
                env = registry.env(now, self.segments.computed_state(conn))
                evaluators.append(Evaluator(env))
            return evaluators[0]

        def for_contact(contact_id: int) -> Callable[[Condition], bool]:
            def holds(condition: Condition) -> bool:
                if contact_id not in cache:
                    cache[contact_id] = load_facts(conn, [contact_id], now=now).get(contact_id)
                facts = cache[contact_id]
                return facts is not None and evaluator().holds(condition, facts)

            return holds

        return for_contact

    # -- the inbox -----------------------------------------------------------------------
    def process_inbox(self, limit: int | None = None) -> int:
        """Consume up to `limit` queued events, in order; returns how many."""
        done, timing = self.reactions.process_inbox(limit or self.options.batch)
        if timing:
            for callback in self.on_steps:
                callback(timing)
        return done

    def log(self, conn: Connection, row: Any, step: str, outcome: str, now: datetime) -> None:
        """Record one step run in `journey_steps` (the primary key makes it once)."""
        conn.execute(
            t.journey_steps.insert().values(
                enrolment_id=row.id,
                seq=row.seq,
                journey_key=row.journey_key,
                version=row.version,
                step=step,
                contact_id=row.contact_id,
                outcome=outcome,
                executed_at=now,
            )
        )

    def end(
        self, conn: Connection, enrolment_id: int, status: str, reason: str, now: datetime
    ) -> None:
        n = t.enrolments.c
        conn.execute(
            update(t.enrolments)
            .where(n.id == enrolment_id, n.status == "active")
            .values(status=status, end_reason=reason, ended_at=now, due_at=None)
        )

    # -- due steps -----------------------------------------------------------------------
    def run_due(self, limit: int | None = None) -> int:
        """Run the current step of up to `limit` due enrolments; returns how many ran."""
        limit = limit or self.options.batch
        calls: list[tuple[ip.Enrolment, Journey, ip.Contact]] = []
        timing: list[tuple[datetime, datetime]] = []
        with self.db.write() as conn:
            now = self.clock.now()  # once the write lock is ours: the time the steps run
            journeys = self.versions.journeys(conn)
            held = [k for k, r in journeys.items() if r.status == "paused"]
            n = t.enrolments.c
            query = select(*_CLAIMED).where(n.status == "active", n.due_at <= now)
            if held:
                query = query.where(n.journey_key.not_in(held))
            query = query.order_by(n.due_at).limit(limit)
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if not rows:
                return 0
            self._run_rows(conn, rows, now, calls, timing)
        for callback in self.on_steps:
            callback(timing)
        if calls:
            self._call(calls)
        return len(rows)

    def _run_rows(
        self,
        conn: Connection,
        rows: Sequence[Any],
        now: datetime,
        calls: list[tuple[ip.Enrolment, Journey, ip.Contact]],
        timing: list[tuple[datetime, datetime]],
        contacts: dict[int, ip.Contact] | None = None,
    ) -> None:
        """Run the current step of each enrolment row (claimed by the caller, `_CLAIMED`
        columns), writing every result in the caller's transaction; HTTP calls are leased
        into `calls`. `contacts`: the rows' contacts, when the caller has loaded them."""
        if contacts is None:
            contacts = self.contacts(conn, [r.contact_id for r in rows])
        holds = self.holds_for(conn, now)
        winners = self.winners.bind(conn, now)
        writes = _Writes()
        for row in rows:
            timing.append((row.due_at, now))
            enrolment = _enrolment(row)
            contact = contacts.get(row.contact_id)
            if contact is None:  # erased meanwhile
                writes.moves.append(_ended(enrolment, "exited", "contact erased", now))
                continue
            if contact.id != row.contact_id:
                enrolment.contact_id = contact.id  # merged: follow the survivor
            try:
                journey = self.journey(conn, row.journey_key, row.version)
                if enrolment.control:
                    writes.moves.append(
                        _ended(enrolment, "completed", "control: window ended", now)
                    )
                    continue
                assert enrolment.step is not None
                if ip.http_target(journey, enrolment.step) is not None:
                    calls.append((enrolment, journey, contact))
                    continue
                transition = ip.run(
                    journey,
                    enrolment,
                    contact,
                    holds(contact.id),
                    now,
                    self.options.default_timezone,
                    winners,
                )
            except Exception as exc:  # one enrolment's failure stops no other
                log.warning("step %s of enrolment %s failed", row.step, row.id, exc_info=True)
                writes.moves.append(self._failure(enrolment, str(exc) or repr(exc), now))
                continue
            self._collect(writes, enrolment, contact, transition, now)
        self._lease(conn, calls, now)
        self._write(conn, writes, now)

    def run_entered(
        self,
        conn: Connection,
        ids: list[int],
        now: datetime,
        contacts: dict[int, ip.Contact] | None = None,
    ) -> list[tuple[datetime, datetime]]:
        """Run the first step of enrolments just entered in this transaction, when it is
        due now and is not an HTTP call: an event's first message is written in the
        transaction that consumed the event, without waiting for the next round. Returns
        (due, ran) of each step run. `contacts`: theirs, when the caller has them (by
        id, as `contacts` returns them)."""
        timing: list[tuple[datetime, datetime]] = []
        if not ids:
            return timing
        n = t.enrolments.c
        rows = [
            row
            for row in conn.execute(
                select(*_CLAIMED).where(
                    one_of(conn, n.id, ids), n.status == "active", n.due_at <= now
                )
            )
            if row.step is not None
            and ip.http_target(self.journey(conn, row.journey_key, row.version), row.step) is None
        ]
        if rows:
            calls: list[tuple[ip.Enrolment, Journey, ip.Contact]] = []
            if contacts is not None and any(r.contact_id not in contacts for r in rows):
                contacts = None  # not the caller's contacts after all: read them
            self._run_rows(conn, rows, now, calls, timing, contacts)
            assert not calls
        return timing

    def _failure(
        self, enrolment: ip.Enrolment, error: str, now: datetime, *, attempts: int | None = None
    ) -> dict[str, Any]:
        tries = enrolment.attempts + 1
        limit = attempts if attempts is not None else self.options.step_attempts
        if tries >= limit:
            move = _ended(enrolment, "failed", f"step {enrolment.step} failed: {error}", now)
            move.update(attempts=tries, last_error=error, step=enrolment.step)
            return move
        delay = backoff(tries, key=enrolment.run_key)
        return {
            **_position(enrolment),
            "attempts": tries,
            "last_error": error,
            "due_at": now + timedelta(seconds=delay),
        }

    def _collect(
        self,
        writes: _Writes,
        enrolment: ip.Enrolment,
        contact: ip.Contact,
        transition: ip.Transition,
        now: datetime,
    ) -> None:
        if not transition.outcome:  # re-armed, nothing ran
            writes.moves.append({**_position(enrolment), "due_at": transition.due_at})
            return
        assert enrolment.step is not None
        writes.steps.append(
            {
                "enrolment_id": enrolment.id,
                "seq": enrolment.seq,
                "journey_key": enrolment.journey_key,
                "version": enrolment.version,
                "step": enrolment.step,
                "contact_id": contact.id,
                "outcome": transition.outcome,
                "executed_at": now,
            }
        )
        if transition.message is not None:
            writes.outbox.append(
                {
                    **transition.message,
                    "idempotency_key": enrolment.run_key,
                    "contact_id": contact.id,
                    "enrolment_id": enrolment.id,
                    "journey_key": enrolment.journey_key,
                    "version": enrolment.version,
                    "step": enrolment.step,
                    "status": "queued",
                    "created_at": now,
                    "send_after": now,
                }
            )
        if transition.update is not None:
            writes.updates.setdefault(contact.id, []).append(transition.update)
        if transition.score is not None:
            writes.events.append(_points_event(enrolment, contact.id, transition.score, now))
        move = {
            "_key": enrolment.id,
            "contact_id": contact.id,
            "step": transition.step,
            "due_at": transition.due_at,
            "seq": enrolment.seq + 1,
            "attempts": 0,
            "last_error": None,
            "context": enrolment.context,
        }
        if transition.status != "active":
            # Only an ending sets these (an active enrolment has none): an UPDATE that
            # leaves them out does not run the rollup marks' trigger (migration 0013).
            move |= {"status": transition.status, "ended_at": now, "end_reason": transition.reason}
        writes.moves.append(move)

    def _write(self, conn: Connection, writes: _Writes, now: datetime) -> None:
        if writes.steps:
            insert_batch(conn, t.journey_steps, writes.steps)
        if writes.outbox:
            insert_batch(conn, t.outbox, writes.outbox, ignore_conflicts=True)
        # One UPDATE per shape of move (its keys, in the order each kind of move lists
        # them): a batch of sends is one statement.
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for move in writes.moves:
            by_shape.setdefault(tuple(move), []).append(move)
        for moves in by_shape.values():
            update_batch(conn, t.enrolments, "id", moves)
        if writes.updates:
            self._write_traits(conn, writes.updates, now)
        if writes.events:
            insert_rows(conn, t.events, writes.events, ignore_conflicts=True)
            queue_evaluations(
                conn,
                [e["contact_id"] for e in writes.events],
                now,
                arrived=[(e["contact_id"], "system", POINTS_EVENT) for e in writes.events],
            )

    def _write_traits(
        self, conn: Connection, updates: dict[int, list[UpdateStep]], now: datetime
    ) -> None:
        # Ingest resolves identities and writes traits under this lock on PostgreSQL: take
        # turns with it and apply the steps to the traits as they are now, or one of the
        # two writes would overwrite the other's.
        self.db.lock_identities(conn)
        c = t.contacts.c
        current = {
            r.id: r.traits or {}
            for r in conn.execute(select(c.id, c.traits).where(one_of(conn, c.id, list(updates))))
        }
        for contact_id, steps in updates.items():
            traits = dict(current.get(contact_id, {}))
            for step in steps:
                traits = apply_update(traits, step)
            conn.execute(
                update(t.contacts).where(c.id == contact_id).values(traits=traits, updated_at=now)
            )
        queue_evaluations(
            conn, list(updates), now, arrived=[(cid, "identify", "") for cid in updates]
        )

    # -- HTTP calls ----------------------------------------------------------------------
    def _lease(
        self,
        conn: Connection,
        calls: list[tuple[ip.Enrolment, Journey, ip.Contact]],
        now: datetime,
    ) -> None:
        """Push the calls' due time past their timeout, so that no other worker makes the
        same call meanwhile; a crash lets the lease run out and the call is made again."""
        n = t.enrolments.c
        for enrolment, journey, _ in calls:
            assert enrolment.step is not None
            target = ip.http_target(journey, enrolment.step)
            assert target is not None
            conn.execute(
                update(t.enrolments)
                .where(n.id == enrolment.id)
                .values(due_at=now + target.timeout + LEASE_MARGIN)
            )

    def _call(self, calls: list[tuple[ip.Enrolment, Journey, ip.Contact]]) -> None:
        def one(item: tuple[ip.Enrolment, Journey, ip.Contact]) -> WebhookOutcome:
            enrolment, journey, contact = item
            assert enrolment.step is not None
            target = ip.http_target(journey, enrolment.step)
            assert target is not None
            secret = self.options.secret(target.secret_env) if target.secret_env else None
            if target.secret_env and secret is None:
                return WebhookOutcome(
                    "fail", None, f"the secret {target.secret_env} is not set", None, None
                )
            request = WebhookRequest(
                url=target.url,
                method=target.method,
                headers=target.headers,
                body=ip.http_body(journey, enrolment, contact),
                secret=secret,
                timeout=target.timeout.total_seconds(),
                idempotency_key=f"nurture-{enrolment.run_key}",
            )
            return self.webhooks.call(request, now=int(self.clock.now().timestamp()))

        with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
            outcomes = list(pool.map(one, calls))
        now = self.clock.now()
        with self.db.write() as conn:
            n = t.enrolments.c
            for (enrolment, journey, contact), outcome in zip(calls, outcomes, strict=True):
                query = select(n.seq, n.status).where(n.id == enrolment.id)
                if not self.db.is_sqlite:
                    query = query.with_for_update()
                current = conn.execute(query).first()
                if current is None or current.seq != enrolment.seq or current.status != "active":
                    continue  # moved on meanwhile (an exit rule, a goal): the result is moot
                writes = _Writes()
                assert enrolment.step is not None
                target = ip.http_target(journey, enrolment.step)
                assert target is not None
                if outcome.kind == "ok":
                    moved = ip.move(
                        journey,
                        journey.following(enrolment.step),
                        contact,
                        enrolment.context,
                        now,
                        self.options.default_timezone,
                    )
                    moved.outcome = f"called:{outcome.status}"
                    self._collect(writes, enrolment, contact, moved, now)
                else:
                    error = outcome.error or outcome.kind
                    tries = 1 if outcome.kind == "fail" else target.retries + 1
                    move = self._failure(enrolment, error, now, attempts=tries)
                    if (
                        outcome.kind == "retry"
                        and outcome.retry_after
                        and move.get("status") is None
                    ):
                        move["due_at"] = max(
                            move["due_at"], now + timedelta(seconds=outcome.retry_after)
                        )
                    writes.moves.append(move)
                self._write(conn, writes, now)


# What running a step reads of an enrolment (`_enrolment`).
_CLAIMED = tuple(
    t.enrolments.c[name]
    for name in (
        "id",
        "journey_key",
        "version",
        "contact_id",
        "step",
        "due_at",
        "seq",
        "attempts",
        "control",
        "context",
        "entered_at",
        "status",
    )
)


def _enrolment(row: Any) -> ip.Enrolment:
    """An enrolment from a row of the `_CLAIMED` columns (in their order)."""
    id_, key, version, contact, step, due, seq, attempts, control, context, entered, status = row
    return ip.Enrolment(
        id_, key, version, contact, step, due, seq, attempts, control, dict(context or {}),
        entered, status,
    )  # fmt: skip


def _position(enrolment: ip.Enrolment) -> dict[str, Any]:
    """What every move of an enrolment sets: `_key` is its id (`bulk.update_rows`)."""
    return {"_key": enrolment.id, "contact_id": enrolment.contact_id}


def _ended(enrolment: ip.Enrolment, status: str, reason: str, now: datetime) -> dict[str, Any]:
    return {
        **_position(enrolment),
        "status": status,
        "end_reason": reason,
        "ended_at": now,
        "due_at": None,
    }


def _points_event(
    enrolment: ip.Enrolment, contact_id: int, step: Any, now: datetime
) -> dict[str, Any]:
    model = step.model
    return {
        "message_id": f"{POINTS_EVENT}:{enrolment.run_key}",
        "type": "system",
        "event": POINTS_EVENT,
        "contact_id": contact_id,
        "timestamp": now,
        "received_at": now,
        "properties": {
            "model": model,
            "points": step.points,
            "reason": step.reason,
            "journey": enrolment.journey_key,
        },
    }
