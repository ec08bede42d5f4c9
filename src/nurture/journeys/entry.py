"""Entering a journey: the entry condition, re-entry rules, one live enrolment per
contact, and the holdout share. Every way in (event and segment triggers, date and
schedule triggers, the admin API) goes through `Entries.enter`.

Entry is idempotent: `entry_key` names what caused it (the event's message id, the
date, the schedule's fire time, the API call's idempotency key), and the pair
(journey, entry_key) is unique, as is the live enrolment of a contact where re-entry is
not `always`: a race or a retry enrols once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, func, select

from nurture.conditions.durations import format_duration
from nurture.journeys import interpreter as ip
from nurture.journeys.model import Journey, ReentryAfter
from nurture.store import tables as t
from nurture.store.bulk import insert_one

if TYPE_CHECKING:
    from nurture.journeys.runtime import JourneyRuntime


@dataclass(frozen=True, slots=True)
class EntryResult:
    status: str  # entered | control | refused
    reason: str | None = None
    enrolment_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "enrolmentId": self.enrolment_id}


class Entries:
    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime

    def refusal(
        self,
        conn: Connection,
        journey: Journey,
        contact_id: int,
        now: datetime,
        holds: ip.Holds,
        history: Mapping[tuple[str, int], tuple[bool, datetime | None]] | None = None,
    ) -> str | None:
        """Why the contact may not enter now, or None. `history`, when the caller read
        it already: (live?, last entry) by (journey, contact), a missing pair for none."""
        n = t.enrolments.c
        reentry = journey.entry.reentry
        if reentry != "always":
            if history is not None:
                live, last = history.get((journey.key, contact_id), (False, None))
            else:
                # One query for every rule: is one live, and when was the last entry.
                live, last = conn.execute(
                    select(
                        func.max(case((n.status == "active", 1), else_=0)),
                        func.max(n.entered_at),
                    ).where(n.journey_key == journey.key, n.contact_id == contact_id)
                ).one()
            if live:
                return "already in the journey"
            if reentry == "never" and last is not None:
                return "entered before (re-entry: never)"
            if (
                isinstance(reentry, ReentryAfter)
                and last is not None
                and now - last < reentry.after
            ):
                return f"entered less than {format_duration(reentry.after)} ago"
        if journey.entry.if_ is not None and not holds(journey.entry.if_):
            return "entry condition does not hold"
        return None

    def enter(
        self,
        conn: Connection,
        journey: Journey,
        version: int,
        contact_id: int,
        *,
        entry_key: str,
        trigger: dict[str, Any] | None,
        now: datetime,
        holds: ip.Holds,
        contact: ip.Contact | None = None,
        history: Mapping[tuple[str, int], tuple[bool, datetime | None]] | None = None,
        defer: list[dict[str, Any]] | None = None,
    ) -> EntryResult:
        """Enter the contact if the rules allow (`contact`, `history`: what the caller
        has loaded already, see `refusal`). With `defer`, the row is added to it for the
        caller to insert with others (the result then has no enrolment id)."""
        refused = self.refusal(conn, journey, contact_id, now, holds, history)
        if refused is not None:
            return EntryResult("refused", refused)
        if contact is None:
            contact = self.runtime.contacts(conn, [contact_id]).get(contact_id)
        if contact is None:
            return EntryResult("refused", "no such contact")
        control = ip.unit(journey.key, contact.id, "holdout") < journey.entry.holdout
        context: dict[str, Any] = {"trigger": trigger}
        step: str | None
        if control:
            # Enrolled, never messaged: held until the goal's window ends, for lift.
            step = None
            due = now + (journey.goal.within if journey.goal is not None else timedelta(0))
        else:
            step = journey.steps[0].id
            due = ip.arrive(
                journey, step, contact, context, now, self.runtime.options.default_timezone
            )
        row = {
            "journey_key": journey.key,
            "version": version,
            "contact_id": contact.id,
            "status": "active",
            "control": control,
            "step": step,
            "due_at": due,
            "seq": 0,
            "attempts": 0,
            "last_error": None,
            "entry_key": entry_key,
            "exclusive": journey.entry.reentry != "always",
            "context": context,
            "entered_at": now,
        }
        status = "control" if control else "entered"
        if defer is not None:
            defer.append(row)
            return EntryResult(status)
        enrolment_id = insert_one(conn, t.enrolments, row, returning="id")
        if enrolment_id is None:
            return EntryResult("refused", "entered already (same entry, or a live enrolment)")
        return EntryResult(status, None, enrolment_id)
