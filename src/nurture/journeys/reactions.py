"""How journeys react to events: the inbox is consumed in order, and each event may
convert enrolments (goals), end them (exit rules), end their waits (`until_event`),
restart their waits (`restart_on`) and start new ones (triggers)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, delete, func, or_, select, update

from nurture.journeys import interpreter as ip
from nurture.journeys.matching import (
    Happened,
    event_matches,
    exit_matches,
    goal_reached,
    goal_revenue,
    trigger_matches,
)
from nurture.journeys.model import (
    MAX_GOAL_WINDOW,
    EventTrigger,
    Journey,
    SegmentTrigger,
    WaitStep,
)
from nurture.store import tables as t
from nurture.store.bulk import insert_batch_returning, one_of

if TYPE_CHECKING:
    from nurture.journeys.runtime import JourneyRuntime

INBOX_LOCK = 7263553  # pg_advisory_xact_lock key: one inbox consumer at a time


class Reactions:
    def __init__(self, runtime: JourneyRuntime) -> None:
        self.rt = runtime

    def _lock_inbox(self, conn: Connection) -> bool:
        if self.rt.db.is_sqlite:
            return True
        # Keyed by schema too: advisory locks are per database, and schemas may each
        # hold a Nurture (as tests do).
        got = conn.exec_driver_sql(
            "SELECT pg_try_advisory_xact_lock(%(k)s, hashtext(current_schema()))",
            {"k": INBOX_LOCK},
        ).scalar()
        return bool(got)

    def process_inbox(self, limit: int) -> tuple[int, list[tuple[datetime, datetime]]]:
        """Consume up to `limit` queued events, in order; returns how many, and (due,
        ran) of the first steps run at once."""
        with self.rt.db.write() as conn:
            if not self._lock_inbox(conn):
                return 0, []
            now = self.rt.clock.now()  # once the write lock is ours
            i, e = t.journey_inbox.c, t.events.c
            queued = conn.execute(select(i.id, i.message_id).order_by(i.id).limit(limit)).all()
            if not queued:
                return 0, []
            # Not joined to the inbox in one query: a queue's statistics are those of the
            # moment it was last analyzed, and the join then reads every event (measured).
            ids = [q.message_id for q in queued]
            found = {
                r.message_id: Happened(
                    r.message_id, r.type, r.event, r.contact_id, r.timestamp, r.properties or {}
                )
                for r in conn.execute(
                    select(
                        e.message_id, e.type, e.event, e.contact_id, e.timestamp, e.properties
                    ).where(one_of(conn, e.message_id, ids))
                )
            }
            holds = self.rt.holds_for(conn, now)
            # Events no goal, exit rule or wait names can only start enrolments.
            journeys, acting = self.rt.versions.journeys_and_reactions(conn)

            def acts(event: Happened) -> bool:
                return (event.type, event.name) in acting or (event.type, "*") in acting

            reacting = any(acts(event) for event in found.values())
            ids = sorted({event.contact_id for event in found.values()})
            contacts = self.rt.contacts(conn, ids)
            c = t.contacts.c
            # Enrolments of contacts merged into these still carry their old ids (only
            # reactions look for enrolments by contact).
            merged: dict[int, list[int]] = {}
            if reacting:
                for row in conn.execute(
                    select(c.id, c.merged_into).where(one_of(conn, c.merged_into, ids))
                ):
                    merged.setdefault(row.merged_into, []).append(row.id)
            # The entry history, for reactions and for re-entry rules other than `always`
            # (a round of events that only enter such journeys reads none).
            if reacting or self._rules_read_history(conn, journeys):
                history, reachable = self._history(conn, ids, merged)
            else:
                history, reachable = {}, set()
            fresh: list[int] = []
            # On PostgreSQL entries are inserted together (one round trip), before anything
            # reads the enrolments of a contact with one waiting, and at the end.
            pending: list[dict[str, Any]] | None = None if self.rt.db.is_sqlite else []
            waiting: set[int] = set()

            def flush() -> None:
                if pending:
                    fresh.extend(
                        insert_batch_returning(conn, t.enrolments, pending, returning="id")
                    )
                    pending.clear()
                    waiting.clear()

            for q in queued:
                event = found.get(q.message_id)
                if event is None:  # an erased contact's events are gone: nothing to do
                    continue
                who = [event.contact_id, *merged.get(event.contact_id, [])]
                if acts(event) and any(cid in reachable for cid in who):
                    if waiting.intersection(who):
                        flush()
                    self._react(conn, event, who, now, holds(event.contact_id))
                    # What the reaction changed is in the database, not in `history`.
                    for pair in [k for k in history if k[1] == event.contact_id]:
                        del history[pair]
                    history_known = False
                else:
                    history_known = True
                contact = contacts.get(event.contact_id)
                entered = self._trigger(
                    conn, event, contact, now, journeys, holds(event.contact_id),
                    history if history_known else None, pending,
                )  # fmt: skip
                for journey_key, enrolment_id in entered:
                    history[(journey_key, event.contact_id)] = (True, now)
                    reachable.add(event.contact_id)
                    if enrolment_id is None:
                        waiting.add(event.contact_id)
                    else:
                        fresh.append(enrolment_id)
            flush()
            conn.execute(delete(t.journey_inbox).where(i.id <= queued[-1].id))
            # First steps that are due now run in this transaction (a send, a branch): no
            # round trip through the due-step claim before the first message.
            timing = self.rt.run_entered(conn, fresh, now, contacts)
        return len(queued), timing

    def _rules_read_history(self, conn: Connection, journeys: dict[str, Any]) -> bool:
        """Does an event or segment trigger enter a journey whose re-entry rule reads
        the contact's entry history (any but `always`)?"""
        for key, row in journeys.items():
            if row.status != "active" or row.version is None:
                continue
            journey = self.rt.journey(conn, key, row.version)
            if (
                isinstance(journey.trigger, EventTrigger | SegmentTrigger)
                and journey.entry.reentry != "always"
            ):
                return True
        return False

    @staticmethod
    def _history(
        conn: Connection, ids: list[int], merged: dict[int, list[int]]
    ) -> tuple[dict[tuple[str, int], tuple[bool, datetime | None]], set[int]]:
        """For a batch's contacts, in one query: each (journey, contact)'s entry history
        (live?, last entry) for the entry rules, and the contacts with enrolments an event
        may act on (the others need no look at their enrolments)."""
        n = t.enrolments.c
        everyone = [*ids, *(old for olds in merged.values() for old in olds)]
        open_ = (n.converted_at.is_(None)) & n.status.in_(("active", "completed"))
        history: dict[tuple[str, int], tuple[bool, datetime | None]] = {}
        reachable: set[int] = set()
        for row in conn.execute(
            select(
                n.journey_key,
                n.contact_id,
                func.max(case((n.status == "active", 1), else_=0)).label("live"),
                func.max(n.entered_at).label("last"),
                func.max(case((open_, 1), else_=0)).label("open"),
            )
            .where(one_of(conn, n.contact_id, everyone))
            .group_by(n.journey_key, n.contact_id)
        ):
            history[(row.journey_key, row.contact_id)] = (bool(row.live), row.last)
            if row.open:
                reachable.add(row.contact_id)
        return history, reachable

    def _react(
        self,
        conn: Connection,
        event: Happened,
        contact_ids: list[int],
        now: datetime,
        holds: ip.Holds,
    ) -> None:
        """Goals, exit rules and waits of the contact's enrolments (`contact_ids`: the
        contact and those merged into it)."""
        n = t.enrolments.c
        query = (
            select(t.enrolments)
            .where(
                one_of(conn, n.contact_id, contact_ids),
                n.converted_at.is_(None),
                # Completed enrolments only while a goal may still convert them.
                or_(
                    n.status == "active",
                    (n.status == "completed") & (n.entered_at >= event.at - MAX_GOAL_WINDOW),
                ),
            )
            .order_by(n.id)
        )
        if not self.rt.db.is_sqlite:
            # Wait for a worker running one of these steps, then read what it wrote: the
            # step that ran and this event must not both move the enrolment on.
            query = query.with_for_update()
        rows = conn.execute(query).all()
        for row in rows:
            journey = self.rt.journey(conn, row.journey_key, row.version)
            trigger = (row.context or {}).get("trigger")
            goal = journey.goal
            if goal is not None and goal_reached(goal, row.entered_at, trigger, event, holds):
                revenue = goal_revenue(goal, event)
                ended = row.status == "active"
                conn.execute(
                    update(t.enrolments)
                    .where(n.id == row.id)
                    .values(
                        status="converted",
                        converted_at=event.at,
                        revenue=revenue,
                        due_at=None,
                        ended_at=now if ended else row.ended_at,
                        end_reason="goal" if ended else row.end_reason,
                    )
                )
                continue
            if row.status != "active":
                continue
            rule = next((r for r in journey.exit if exit_matches(r, event, trigger, holds)), None)
            if rule is not None:
                reason = rule.reason or f"exit: {event.name}"
                self.rt.end(conn, row.id, "exited", reason, now)
                continue
            if row.control or row.step is None:
                continue
            step = journey.step(row.step)
            if isinstance(step, WaitStep):
                self._wake(conn, row, journey, step, event, now, holds)

    def _wake(
        self,
        conn: Connection,
        row: Any,
        journey: Journey,
        step: WaitStep,
        event: Happened,
        now: datetime,
        holds: ip.Holds,
    ) -> None:
        trigger = (row.context or {}).get("trigger")
        n = t.enrolments.c
        if step.until_event is not None and event_matches(step.until_event, event, trigger):
            if step.until_event.if_ is not None and not holds(step.until_event.if_):
                return
            context = dict(row.context or {})
            context.pop("wait", None)
            context["event"] = event.to_context()
            contacts = self.rt.contacts(conn, [row.contact_id])
            contact = contacts.get(row.contact_id) or ip.Contact(row.contact_id)
            target = step.on_event or journey.following(step.id)
            moved = ip.move(
                journey, target, contact, context, now, self.rt.options.default_timezone
            )
            self.rt.log(conn, row, step.id, "event", now)
            conn.execute(
                update(t.enrolments)
                .where(n.id == row.id)
                .values(
                    step=moved.step,
                    due_at=moved.due_at,
                    seq=row.seq + 1,
                    attempts=0,
                    context=context,
                    status=moved.status,
                    ended_at=None if moved.status == "active" else now,
                    end_reason=moved.reason,
                )
            )
            return
        if step.for_ is not None and any(
            event_matches(m, event, trigger) and (m.if_ is None or holds(m.if_))
            for m in step.restart_on
        ):
            context = dict(row.context or {})
            context["wait"] = {"step": step.id, "since": event.at.isoformat()}
            conn.execute(
                update(t.enrolments)
                .where(n.id == row.id)
                .values(due_at=max(event.at + step.for_, now), context=context)
            )

    def _trigger(
        self,
        conn: Connection,
        event: Happened,
        contact: ip.Contact | None,
        now: datetime,
        journeys: dict[str, Any],
        holds: ip.Holds,
        history: dict[tuple[str, int], tuple[bool, datetime | None]] | None,
        defer: list[dict[str, Any]] | None,
    ) -> list[tuple[str, int | None]]:
        """Enter the contact into the journeys the event triggers; returns (journey,
        enrolment) of each entry, the enrolment None when its row went to `defer`.
        `history` (when known) spares the entry rules a query per journey."""
        entered: list[tuple[str, int | None]] = []
        if contact is None:  # erased or gone
            return entered
        for key, row in journeys.items():
            if row.status != "active" or row.version is None:
                continue
            journey = self.rt.journey(conn, key, row.version)
            trigger = journey.trigger
            if isinstance(trigger, EventTrigger | SegmentTrigger) and trigger_matches(
                trigger, event
            ):
                result = self.rt.entries.enter(
                    conn,
                    journey,
                    row.version,
                    event.contact_id,
                    entry_key=f"event:{event.message_id}",
                    trigger=event.to_context(),
                    now=now,
                    holds=holds,
                    contact=contact,
                    history=history,
                    defer=defer,
                )
                if result.status != "refused":
                    entered.append((key, result.enrolment_id))
        return entered
