"""Back-test: a journey replayed over stored history, in memory, on a simulated clock.

Marketers want to know whom a journey would have reached, with which messages and when,
before they publish it. The stored events of the period that the journey reacts to are
streamed in time order, merged with the timers of the simulated enrolments, and each goes
through the live engine's own rules: `interpreter.run` for steps, `matching` for triggers,
goals, exits and waits, and the entry, reaction and timer rules of `entry.py`,
`runtime.py` and `schedules.py`, restated here against enrolments held in memory.
Nothing is written: every query runs on a read connection (`db.read()`), and enrolments,
trait updates and messages exist only in the report.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from nurture import localtime
from nurture.conditions.facts import ContactFacts, load_facts

# The live engine's own helpers (private to their modules), so that both mean the same.
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import Condition
from nurture.journeys import interpreter as ip
from nurture.journeys.backtest_report import (
    BacktestReport,
    Conversion,
    Entrant,
    SimMessage,
)
from nurture.journeys.matching import (
    Happened,
    event_matches,
    exit_matches,
    goal_reached,
    goal_revenue,
    interest,
    trigger_matches,
)
from nurture.journeys.model import (
    ApiTrigger,
    BranchStep,
    DateTrigger,
    EventTrigger,
    Journey,
    ReentryAfter,
    ScheduleTrigger,
    SegmentTrigger,
    WaitStep,
)
from nurture.journeys.runtime import JourneyRuntime
from nurture.journeys.schedules import audience, dates_due
from nurture.journeys.traits import apply_update
from nurture.store import tables as t
from nurture.store.types import to_microseconds

PAGE = 2000  # events read (and timeline items simulated) per read transaction
FACTS_KEPT = 4 * PAGE  # contacts whose facts stay loaded (least recently used go first)
DATE_WINDOW = timedelta(days=30)  # a yearly date fires at most once per window
BURST = 1000  # steps one enrolment may run at one instant: more is a loop without a wait

# A timeline item: (at, 0 for an event | 1 for a timed entry, tiebreak, what).
Item = tuple[datetime, int, int, Any]

TRIGGER_CAVEATS = {
    ApiTrigger: "API entries are not stored history: nobody enters an API-triggered journey.",
    SegmentTrigger: "Segment entries replay the stored segment.entered/exited events.",
}


def backtest(
    runtime: JourneyRuntime,
    journey: Journey,
    start: datetime,
    end: datetime,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestReport:
    """Replay the stored history of [start, end] through `journey` (a published version or
    a draft) and report what would have happened; writes nothing. `progress(done, total)`
    is told the simulated seconds covered after each page."""
    if end < start:
        raise ValueError("the back-test period ends before it starts")
    return _Simulation(runtime, journey, start, end).run(progress)


def _tests_conditions(journey: Journey) -> bool:
    """Whether a rule or step of the journey tests a condition (so facts are needed)."""
    rules: list[Any] = [journey.entry, journey.goal, *journey.exit]
    for step in journey.steps:
        if isinstance(step, BranchStep):
            return True
        if isinstance(step, WaitStep):
            rules += [step.until_event, *step.restart_on]
    return any(getattr(rule, "if_", None) is not None for rule in rules)


@dataclass(slots=True)
class _Run:
    """One simulated enrolment, with what the enrolments table would hold besides."""

    enrolment: ip.Enrolment
    user_id: str | None
    token: int = 0  # bumped when the due time changes: older timer entries are stale
    end_reason: str | None = None
    converted: bool = False
    burst_at: datetime | None = None
    burst: int = 0


class _Simulation:
    def __init__(
        self, runtime: JourneyRuntime, journey: Journey, start: datetime, end: datetime
    ) -> None:
        self.rt, self.j, self.start, self.end = runtime, journey, start, end
        self.tz = runtime.options.default_timezone
        self.report = BacktestReport(journey.key, start, end)
        self.runs: dict[int, list[_Run]] = {}  # by contact
        self.by_id: dict[int, _Run] = {}
        self.timers: list[tuple[datetime, int, int]] = []  # (due, enrolment id, token)
        self.contacts: dict[int, ip.Contact | None] = {}
        self.facts: OrderedDict[int, ContactFacts | None] = OrderedDict()
        self.ids = itertools.count(1)
        self.conn: Connection  # the read connection of the current page
        self.prefetch = _tests_conditions(journey)
        with runtime.db.read() as conn:
            self.registry = runtime.segments.registry(conn)
            self.state = runtime.segments.computed_state(conn)

    # -- the timeline --------------------------------------------------------------------
    def run(self, progress: Callable[[int, int], None] | None) -> BacktestReport:
        total = int((self.end - self.start).total_seconds())
        timeline = heapq.merge(self._events(), self._timed_entries())
        while chunk := list(itertools.islice(timeline, PAGE)):
            with self.rt.db.read() as self.conn:
                ids = [w.contact_id if isinstance(w, Happened) else w[0] for *_, w in chunk]
                self._load_contacts(ids)
                self._load_facts(ids)
                for at, _, _, what in chunk:
                    self._due_until(at)
                    if isinstance(what, Happened):
                        self.report.events += 1
                        self._event(what)
                    else:
                        self._enter(what[0], at, what[1])
            if len(self.contacts) > 2 * len(self.runs) + PAGE:
                # Keep in memory only contacts with enrolments (and simulated traits).
                self.contacts = {i: c for i, c in self.contacts.items() if c and c.id in self.runs}
            if progress is not None:
                progress(int((chunk[-1][0] - self.start).total_seconds()), total)
        with self.rt.db.read() as self.conn:
            self._due_until(self.end)
        if progress is not None:
            progress(total, total)
        return self._tally()

    def _tally(self) -> BacktestReport:
        """Count how the simulated enrolments stand at the end of the period."""
        report = self.report
        for run in sorted(self.by_id.values(), key=lambda r: r.enrolment.id):
            e = run.enrolment
            if e.status == "active":
                report.active[e.step or "control"] += 1
            elif e.status == "completed":
                report.completed += 1
            elif e.status in ("exited", "failed"):
                (report.exits if e.status == "exited" else report.failed)[run.end_reason or ""] += 1
            waiting = e.step if e.status == "active" else None
            report.entrants.append(
                Entrant(e.contact_id, run.user_id, e.entered_at, e.control, e.status,
                        run.end_reason, waiting)
            )  # fmt: skip
        caveat = TRIGGER_CAVEATS.get(type(self.j.trigger))
        report.caveats += [caveat] if caveat else []
        return report

    def _events(self) -> Iterator[Item]:
        """The period's events the journey reacts to, by (timestamp, id), a page per read."""
        names: dict[str, set[str]] = {}
        for type_, name in interest(self.j):
            names.setdefault(type_, set()).add(name)
        if not names:
            return
        e = t.events.c
        kinds = [
            e.type == type_ if "*" in wanted else and_(e.type == type_, e.event.in_(wanted))
            for type_, wanted in sorted(names.items())
        ]
        query = select(
            e.id, e.message_id, e.type, e.event, e.contact_id, e.timestamp, e.properties
        ).where(or_(*kinds), e.timestamp >= self.start, e.timestamp <= self.end)
        after: tuple[datetime, int] | None = None
        while True:
            page = query
            if after is not None:
                page = page.where(
                    or_(e.timestamp > after[0], and_(e.timestamp == after[0], e.id > after[1]))
                )
            with self.rt.db.read() as conn:
                rows = conn.execute(page.order_by(e.timestamp, e.id).limit(PAGE)).all()
            for r in rows:
                event = Happened(
                    r.message_id, r.type, r.event, r.contact_id, r.timestamp, r.properties or {}
                )
                yield r.timestamp, 0, r.id, event
            if len(rows) < PAGE:
                return
            after = (rows[-1].timestamp, rows[-1].id)

    def _timed_entries(self) -> Iterator[Item]:
        """Date and schedule triggers' entries in the period: (contact, trigger context)
        at each fire time, found with the scanner's own read-only queries."""
        trigger, tick = self.j.trigger, itertools.count()
        since = self.start - timedelta(microseconds=1)  # the scanner's windows are (a, b]
        if isinstance(trigger, DateTrigger):
            while since < self.end:
                until = min(since + DATE_WINDOW, self.end)
                with self.rt.db.read() as conn:
                    due = dates_due(self.rt, conn, trigger, since, until)
                for contact_id, fire in sorted(due, key=lambda d: (d[1], d[0])):
                    what = (contact_id, {"date": trigger.date, "at": fire.isoformat()})
                    yield fire, 1, next(tick), what
                since = until
        elif isinstance(trigger, ScheduleTrigger):
            cron = localtime.Cron(trigger.schedule, trigger.timezone)
            fire = cron.next_after(since)
            while fire <= self.end:
                with self.rt.db.read() as conn:
                    members = audience(self.rt, conn, trigger, fire)
                context = {"schedule": trigger.schedule, "at": fire.isoformat()}
                for contact_id in members:
                    yield fire, 1, next(tick), (contact_id, context)
                fire = cron.next_after(fire)

    # -- contacts and conditions ---------------------------------------------------------
    def _load_contacts(self, ids: Iterable[int]) -> None:
        wanted = sorted({i for i in ids if i not in self.contacts})
        if wanted:
            found = self.rt.contacts(self.conn, wanted)
            self.contacts.update({i: found.get(i) for i in wanted})

    def _contact(self, contact_id: int) -> ip.Contact | None:
        self._load_contacts([contact_id])
        return self.contacts[contact_id]

    def _holds(self, contact: ip.Contact | None, at: datetime) -> ip.Holds:
        """A condition tester for the contact as of `at`: events up to then, and its traits
        as the simulation has them (today's, plus the journey's own updates)."""
        evaluator: list[Evaluator] = []  # made on first use: most events test nothing

        def holds(condition: Condition) -> bool:
            facts = self._facts(contact.id) if contact is not None else None
            if contact is None or facts is None:
                return False
            if not evaluator:
                evaluator.append(Evaluator(self.registry.env(at, self.state)))
            seen = bisect_right(facts.events, to_microseconds(at), key=lambda f: f.at)
            view = replace(facts, events=facts.events[:seen], traits=contact.traits)
            return evaluator[0].holds(condition, view)

        return holds

    def _facts(self, contact_id: int) -> ContactFacts | None:
        if contact_id not in self.facts:
            self._load_facts([contact_id], always=True)
        self.facts.move_to_end(contact_id)
        return self.facts[contact_id]

    def _load_facts(self, ids: Iterable[int], *, always: bool = False) -> None:
        """Facts (events up to the end of the period) of the contacts a page is about to
        test conditions for, in one read rather than one per contact."""
        wanted = sorted({i for i in ids if i not in self.facts}) if self.prefetch or always else []
        if wanted:
            found = load_facts(self.conn, wanted, now=self.end)
            self.facts.update({i: found.get(i) for i in wanted})
        while len(self.facts) > FACTS_KEPT:
            self.facts.popitem(last=False)

    # -- entry (as Entries.refusal and Entries.enter) ------------------------------------
    def _enter(self, contact_id: int, at: datetime, trigger: dict[str, Any]) -> None:
        contact = self._contact(contact_id)
        holds = self._holds(contact, at)
        refused = self._refusal(contact.id if contact else contact_id, at, holds)
        if refused is None and contact is None:
            refused = "no such contact"
        if refused is not None or contact is None:
            self.report.refused[refused or ""] += 1
            return
        control = ip.unit(self.j.key, contact.id, "holdout") < self.j.entry.holdout
        context: dict[str, Any] = {"trigger": trigger}
        step: str | None = None
        if control:
            due = at + (self.j.goal.within if self.j.goal is not None else timedelta(0))
            self.report.control += 1
        else:
            step = self.j.steps[0].id
            due = ip.arrive(self.j, step, contact, context, at, self.tz)
            self.report.entered += 1
        enrolment = ip.Enrolment(
            next(self.ids), self.j.key, 0, contact.id, step, None, 0, 0, control, context, at
        )
        run = _Run(enrolment, contact.user_id)
        self.runs.setdefault(contact.id, []).append(run)
        self.by_id[enrolment.id] = run
        self._schedule(run, due)

    def _refusal(self, contact_id: int, at: datetime, holds: ip.Holds) -> str | None:
        mine = [r.enrolment for r in self.runs.get(contact_id, [])]
        reentry = self.j.entry.reentry
        if reentry != "always" and any(e.status == "active" for e in mine):
            return "already in the journey"
        if reentry == "never" and mine:
            return "entered before (re-entry: never)"
        last = max((e.entered_at for e in mine), default=None)
        if isinstance(reentry, ReentryAfter) and last is not None and at - last < reentry.after:
            return f"entered less than {reentry.after} ago"
        if self.j.entry.if_ is not None and not holds(self.j.entry.if_):
            return "entry condition does not hold"
        return None

    # -- events (as JourneyRuntime._react and _trigger) ----------------------------------
    def _event(self, event: Happened) -> None:
        contact = self._contact(event.contact_id)
        holds = self._holds(contact, event.at)
        for run in self.runs.get(contact.id, []) if contact is not None else []:
            self._react(run, event, holds)
        trigger = self.j.trigger
        if isinstance(trigger, EventTrigger | SegmentTrigger) and trigger_matches(trigger, event):
            self._enter(event.contact_id, event.at, event.to_context())

    def _react(self, run: _Run, event: Happened, holds: ip.Holds) -> None:
        e, goal = run.enrolment, self.j.goal
        if e.status not in ("active", "completed") or run.converted:
            return
        trigger = e.context.get("trigger")
        if goal is not None and goal_reached(goal, e.entered_at, trigger, event, holds):
            revenue = goal_revenue(goal, event)
            self.report.conversions.append(
                Conversion(e.contact_id, run.user_id, event.at, revenue, e.control)
            )
            run.converted = True
            if e.status == "active":
                self._end(run, "converted", "goal")
            e.status = "converted"
            return
        if e.status != "active":
            return
        rule = next((r for r in self.j.exit if exit_matches(r, event, trigger, holds)), None)
        if rule is not None:
            self._end(run, "exited", rule.reason or f"exit: {event.name}")
        elif not e.control and e.step is not None:
            step = self.j.step(e.step)
            if isinstance(step, WaitStep):
                self._wake(run, step, event, holds)

    def _wake(self, run: _Run, step: WaitStep, event: Happened, holds: ip.Holds) -> None:
        e = run.enrolment
        trigger = e.context.get("trigger")
        wanted = step.until_event
        if wanted is not None and event_matches(wanted, event, trigger):
            if wanted.if_ is not None and not holds(wanted.if_):
                return
            e.context.pop("wait", None)
            e.context["event"] = event.to_context()
            contact = self._contact(e.contact_id) or ip.Contact(e.contact_id)
            target = step.on_event or self.j.following(step.id)
            moved = ip.move(self.j, target, contact, e.context, event.at, self.tz)
            moved.outcome = "event"
            self._apply(run, moved)
        elif step.for_ is not None and any(
            event_matches(m, event, trigger) and (m.if_ is None or holds(m.if_))
            for m in step.restart_on
        ):
            e.context["wait"] = {"step": step.id, "since": event.at.isoformat()}
            self._schedule(run, event.at + step.for_)

    # -- timers (as JourneyRuntime.run_due) ----------------------------------------------
    def _due_until(self, moment: datetime) -> None:
        if self.prefetch and self.timers and self.timers[0][0] <= moment:
            self._load_facts(self._due_contacts(moment))
        while self.timers and self.timers[0][0] <= moment:
            due, enrolment_id, token = heapq.heappop(self.timers)
            run = self.by_id[enrolment_id]
            if run.token == token and run.enrolment.status == "active":
                self._step(run, due)

    def _due_contacts(self, moment: datetime) -> list[int]:
        """Contacts of (up to a page of) the timers due by `moment`, without popping them:
        below a timer due later in the heap, every timer is due later too."""
        found: list[int] = []
        stack = [0]
        while stack and len(found) < PAGE:
            i = stack.pop()
            if i < len(self.timers) and self.timers[i][0] <= moment:
                found.append(self.by_id[self.timers[i][1]].enrolment.contact_id)
                stack += [2 * i + 1, 2 * i + 2]
        return found

    def _step(self, run: _Run, now: datetime) -> None:
        e = run.enrolment
        run.burst, run.burst_at = (run.burst + 1 if run.burst_at == now else 0), now
        contact = self._contact(e.contact_id)
        if contact is None:
            self._end(run, "exited", "contact erased")
            return
        if e.control:
            self._end(run, "completed", "control: window ended")
            return
        assert e.step is not None
        try:
            if run.burst > BURST:
                raise RuntimeError(f"more than {BURST} steps at {now.isoformat()}: a loop")
            target = ip.http_target(self.j, e.step)
            if target is not None:
                # Not called: counted, and taken as answered 200.
                self.report.webhooks[f"{target.method} {target.url}"] += 1
                following = self.j.following(e.step)
                moved = ip.move(self.j, following, contact, e.context, now, self.tz)
                moved.outcome = "called:200"
            else:
                moved = ip.run(self.j, e, contact, self._holds(contact, now), now, self.tz)
        except Exception as exc:  # as a step that failed every attempt
            self._end(run, "failed", f"step {e.step} failed: {exc or repr(exc)}")
            return
        if not moved.outcome:  # re-armed, nothing ran
            self._schedule(run, moved.due_at)
            return
        if moved.message is not None:
            m = moved.message
            self.report.messages.append(
                SimMessage(
                    contact.id, contact.user_id, e.step, m["channel"], m["template"],
                    m["variant"], m["kind"], m["recipient"], now,
                )
            )  # fmt: skip
        if moved.update is not None:
            contact.traits = apply_update(contact.traits, moved.update)
        if moved.score is not None:
            model = moved.score.model or ""
            self.report.points[model] = self.report.points.get(model, 0.0) + moved.score.points
        self._apply(run, moved)

    # -- moving an enrolment -------------------------------------------------------------
    def _apply(self, run: _Run, moved: ip.Transition) -> None:
        """Log the step run and go where the transition says."""
        e = run.enrolment
        assert e.step is not None
        self.report.steps.setdefault(e.step, {}).setdefault(moved.outcome, 0)
        self.report.steps[e.step][moved.outcome] += 1
        e.seq += 1
        e.step = moved.step
        if moved.status == "active":
            self._schedule(run, moved.due_at)
        else:
            self._end(run, moved.status, moved.reason or moved.status)

    def _schedule(self, run: _Run, due: datetime | None) -> None:
        run.token += 1
        run.enrolment.due_at = due
        if due is not None:
            heapq.heappush(self.timers, (due, run.enrolment.id, run.token))

    def _end(self, run: _Run, status: str, reason: str) -> None:
        run.enrolment.status, run.end_reason = status, reason
        self._schedule(run, None)
