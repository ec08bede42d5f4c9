"""The evaluation engine: keeps segment memberships, lifecycle stages and scores current.

Two paths, one meaning (the two evaluators of the condition language):

- **Real time** (`evaluate_pending`): contacts queued by ingest are claimed in batches,
  their facts loaded once, and every definition evaluated in memory: segments in
  dependency order, then scores, then stages, then again the segments that read
  scores or stages. The changes, their history and the system events are written in
  the transaction that removes the contacts from the queue.
- **Whole population** (`evaluate_all`, on a schedule): each segment is compiled to SQL
  and diffed against its stored members; this catches what changes with time alone
  ("no login in 14 days").

A definition that fails (does not parse, refers to something missing, or raises while
evaluating) is marked failed with its error and skipped; the others go on.

On PostgreSQL, real-time evaluations take a shared advisory lock and a lock per contact,
and the writes of a population run take it exclusively. On SQLite both paths evaluate
outside the write lock. A population run's query runs without locks; its write leaves out
contacts whose events are newer than the query's snapshot, so it never overwrites what a
real-time evaluation decided with newer data.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from nurture.clock import Clock
from nurture.conditions.compile import SqlCompiler
from nurture.conditions.computed import compute_state, computed_values
from nurture.conditions.env import Env
from nurture.conditions.facts import ContactFacts, load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import Condition
from nurture.errors import NotFound, ValidationError
from nurture.lifecycle.scoring import EventRule
from nurture.segments import queue
from nurture.segments.changes import Changes, apply
from nurture.segments.definitions import DefinitionStore
from nurture.segments.registry import Registry
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import one_of, upsert_rows
from nurture.store.counters import counter, raise_counter
from nurture.store.hints import unindexed

log = logging.getLogger("nurture.segments")

# PostgreSQL advisory locks, keyed by schema too (they are per database, and schemas may
# each hold a Nurture): the evaluation lock, (EVALUATION_LOCK, hash of the schema), shared
# by real-time evaluations, exclusive for population runs; and each contact's lock, (hash
# of CONTACT_LOCK and the schema, contact id).
EVALUATION_LOCK = 7263554
CONTACT_LOCK = "nurture.contact:"
_EPOCH = "evaluation_epoch"  # meta key: raised by every population write


@dataclass
class SegmentResult:
    key: str
    members: int = 0
    entered: int = 0
    exited: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _Result:
    """One evaluation of a batch of contacts, before it is written."""

    registry: Registry
    by_contact: dict[int, Changes] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _PopulationRead:
    """A segment's members by SQL, from one snapshot, before they are written."""

    key: str
    members: set[int] = field(default_factory=set)
    newest_event: int = 0
    problem: str | None = None  # the definition does not resolve
    error: str | None = None  # the query failed


@dataclass
class _StagesRead:
    """Every contact's stage by SQL, and the stored stages, from one snapshot."""

    newest_event: int
    stages: dict[str, dict[int, str]] = field(default_factory=dict)
    seen: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    segments: list[SegmentResult] = field(default_factory=list)
    stage_changes: int = 0
    score_changes: int = 0


class Engine:
    """Evaluates definitions for contacts; thread-safe, one per process."""

    def __init__(self, db: Database, clock: Clock, *, threads: int = 0) -> None:
        self.db = db
        self.clock = clock
        # Segments a population run evaluates at once (0: one per core, at most 4).
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._registry = Registry()
        self._registry.version = -1
        self._lock = threading.Lock()
        # Called after each real-time batch commits, with how long each contact waited
        # from being queued (its events stored) to being evaluated (benchmarks, metrics).
        self.on_evaluated: list[Callable[[list[timedelta]], None]] = []

    # -- definitions ------------------------------------------------------------------
    def registry(self, conn: Connection) -> Registry:
        """The definitions in force, rebuilt when they changed."""
        version = DefinitionStore.version(conn)
        with self._lock:
            if self._registry.version != version:
                self._registry = Registry.build(DefinitionStore.all(conn), version)
            return self._registry

    def computed_state(self, conn: Connection) -> dict[str, object]:
        s = t.evaluation_state.c
        return {row.key: row.value for row in conn.execute(select(s.key, s.value))}

    def _mark_problems(self, conn: Connection, reg: Registry) -> None:
        for (kind, key), problem in reg.problems.items():
            stored = DefinitionStore.get(conn, kind, key)
            if stored is not None and (stored.status != "failed" or stored.error != problem):
                DefinitionStore.mark(conn, kind, key, error=problem)

    # -- real time ----------------------------------------------------------------------
    def evaluate_pending(self, limit: int = 500) -> int:
        """Evaluate up to `limit` queued contacts; returns how many were claimed.

        On SQLite the facts are read and evaluated outside the write lock (ingest goes on
        meanwhile), then the results are written in a short write transaction, only for
        contacts that were not queued again in between; the others stay queued for the
        next round. On PostgreSQL one transaction claims (SKIP LOCKED), locks, evaluates
        and writes."""
        now = self.clock.now()
        if self.db.is_sqlite:
            with self.db.read() as conn:
                claimed = queue.claim(conn, limit)
                if not claimed:
                    return 0
                epoch = self._epoch(conn)
                arrived = self._arrived(conn, claimed)
                result = self._evaluate(conn, sorted(claimed), now, arrived)
            with self.db.write() as conn:
                if self._epoch(conn) != epoch:  # definitions or stored state moved
                    result = self._evaluate(conn, sorted(claimed), now, arrived)
                fresh = queue.unchanged(conn, claimed)
                self._write(conn, result, sorted(fresh), now)
        else:
            with self.db.write() as conn:
                self._lock_evaluation(conn, shared=True)
                claimed = queue.claim(conn, limit)
                if not claimed:
                    return 0
                self._lock_contacts(conn, sorted(claimed))
                result = self._evaluate(conn, sorted(claimed), now, self._arrived(conn, claimed))
                fresh = set(claimed)
                self._write(conn, result, sorted(fresh), now)
        if self.on_evaluated and fresh:
            done = self.clock.now()
            for listener in self.on_evaluated:
                listener([done - claimed[cid].queued_at for cid in fresh])
        return len(claimed)

    def evaluate_at_ingest(
        self, conn: Connection, due: queue.Due, now: datetime, *, limit: int
    ) -> Callable[[], None] | None:
        """Evaluate, inside the ingest transaction that just stored their events, up to
        `limit` due contacts, so that their memberships, stages and scores commit with the
        events; returns what to call once that transaction committed (the `on_evaluated`
        listeners), or None when it evaluated nothing.

        The contacts it evaluates are taken from `due` and never queued. Those it does not
        evaluate are queued for the evaluator: a larger group (an import), and on
        PostgreSQL those another evaluation holds (a population write, a real-time batch),
        found with try-locks so that ingest never waits for them. Any error rolls back to
        a savepoint and leaves them all due: the events are stored whatever evaluation does."""
        if not due.arrived or len(due.arrived) > limit:
            return None
        try:
            with conn.begin_nested():
                # Contacts queued before (events no evaluation has seen yet) are evaluated on
                # those too, and leave the queue.
                earlier = queue.claims_of(conn, due.arrived)
                if not self._lock_evaluation(conn, shared=True, wait=False):
                    return None
                ids = self._lock_contacts(conn, sorted(due.arrived), wait=False)
                if not ids:
                    return None
                before = self._arrived(conn, {c: earlier[c] for c in ids if c in earlier})
                arrived = {
                    c: due.arrived[c] | before.get(c, set())
                    for c in ids
                    if c not in due.full and not (c in earlier and earlier[c].full)
                }
                result = self._evaluate(conn, ids, now, arrived)
                self._write(conn, result, ids, now, queued=[c for c in ids if c in earlier])
        except Exception:  # the events are stored all the same; the queue keeps them
            log.exception("evaluation at ingest failed; the evaluator will retry")
            return None
        due.take(ids)
        listeners = list(self.on_evaluated)
        if not listeners:
            return None

        def report() -> None:
            done = self.clock.now()
            waits = [done - (earlier[c].queued_at if c in earlier else now) for c in ids]
            for listener in listeners:
                listener(waits)

        return report

    def _arrived(
        self, conn: Connection, claimed: dict[int, queue.Claim]
    ) -> dict[int, set[tuple[str, str]]]:
        """What arrived for each claimed contact that needs no full evaluation (a contact
        queued without a record of what arrived is evaluated on everything)."""
        partial = [cid for cid, claim in claimed.items() if not claim.full]
        return queue.arrivals(conn, partial)

    def _epoch(self, conn: Connection) -> tuple[int, int]:
        """Changes when definitions change or a population run writes."""
        return DefinitionStore.version(conn), counter(conn, _EPOCH)

    def _bump_epoch(self, conn: Connection) -> None:
        raise_counter(conn, _EPOCH)

    def _lock_evaluation(
        self, conn: Connection, *, shared: bool = False, wait: bool = True
    ) -> bool:
        """PostgreSQL: the evaluation lock for the rest of this transaction, shared by
        real-time batches, exclusive for population writes; with `wait=False` only if it
        is free now. Whether it is held. SQLite's write lock suffices."""
        if self.db.is_sqlite:
            return True
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        function += "_shared" if shared else ""
        got = conn.exec_driver_sql(
            f"SELECT {function}(%(k)s, hashtext(current_schema()))", {"k": EVALUATION_LOCK}
        ).scalar()
        return got is not False  # the waiting functions return nothing

    def _lock_contacts(self, conn: Connection, ids: list[int], *, wait: bool = True) -> list[int]:
        """PostgreSQL: each contact's lock for the rest of this transaction (with
        `wait=False`, those free now); the contacts locked. SQLite's write lock suffices."""
        if self.db.is_sqlite:
            return ids
        if not ids:
            return []
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        # One statement for them all, taken in one order everywhere (no deadlocks): the
        # array's, ascending, which WITH ORDINALITY keeps.
        rows = conn.exec_driver_sql(
            f"SELECT u.id, {function}(hashtext(%(a)s || current_schema()),"
            " mod(u.id, 2147483647)::int)::text"
            " FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n",
            {"a": CONTACT_LOCK, "ids": sorted(ids)},
        ).all()
        # pg_advisory_xact_lock returns void (''), pg_try_advisory_xact_lock a boolean.
        return [int(contact_id) for contact_id, got in rows if got != "false"]

    def _write(
        self,
        conn: Connection,
        result: _Result,
        ids: list[int],
        now: datetime,
        *,
        queued: list[int] | None = None,
    ) -> None:
        """Write the results of `ids` and take them (or of them those `queued`) off the
        queue."""
        wanted = set(ids)
        changes = Changes(dropped=[i for i in result.dropped if i in wanted])
        for contact_id in ids:
            if contact_id in result.by_contact:
                changes.extend(result.by_contact[contact_id])
        apply(conn, changes, now)
        queue.done(conn, ids if queued is None else queued)
        self._mark_problems(conn, result.registry)
        for key, error in result.failed.items():
            log.warning("segment %s failed: %s", key, error)
            DefinitionStore.mark(conn, "segment", key, error=error)

    def evaluate_contacts(self, conn: Connection, ids: list[int], now: datetime) -> Changes:
        """What evaluating these contacts now would change (nothing is written)."""
        result = self._evaluate(conn, ids, now)
        changes = Changes(dropped=list(result.dropped))
        for contact_changes in result.by_contact.values():
            changes.extend(contact_changes)
        return changes

    def _evaluate(
        self,
        conn: Connection,
        ids: list[int],
        now: datetime,
        arrived: dict[int, set[tuple[str, str]]] | None = None,
    ) -> _Result:
        """Evaluate contacts; `arrived` limits, per contact listed, which segments are
        re-evaluated (see `_contact`); contacts not listed are evaluated on everything."""
        reg = self.registry(conn)
        if not (reg.segments or reg.stage_models or reg.score_models or reg.problems):
            return _Result(reg)  # nothing to evaluate: the batch only leaves the queue
        env = reg.env(now, self.computed_state(conn))
        evaluate = Evaluator(env)
        facts = load_facts(conn, ids, event_names=reg.event_names, now=now, parts=reg.fact_parts)
        result = _Result(reg, dropped=[i for i in ids if i not in facts])
        arrived = arrived or {}
        for contact in facts.values():
            result.by_contact[contact.id] = self._contact(
                reg, evaluate, contact, result.failed, arrived.get(contact.id)
            )
        return result

    def _contact(
        self,
        reg: Registry,
        evaluate: Evaluator,
        facts: ContactFacts,
        failed: dict[str, str],
        arrived: set[tuple[str, str]] | None = None,
    ) -> Changes:
        """Evaluate one contact's definitions. With `arrived` (the (type, name) pairs of the
        events that arrived since its last evaluation), only the segments those events,
        or segments, stages and scores changed in this evaluation, can move are evaluated,
        and so are stage and score models: the others keep their stored membership, stage
        and score (what changes with time alone, decay included, is the population run's
        job). A model with nothing stored for the contact yet is always evaluated."""
        before_segments = set(facts.segments)
        before_stages = dict(facts.stages)
        before_scores = dict(facts.scores)
        env = evaluate.env
        moved: set[str] = set()
        state_changed = False
        pairs = None if arrived is None else frozenset(arrived)
        models = None if pairs is None else reg.touched_models(pairs)
        rounds = reg.plan(pairs)

        def due(kind: str, key: str, stored: dict[str, Any]) -> bool:
            if models is None or key not in stored or (kind, key) in models:
                return True
            changed = facts.stages != before_stages or facts.scores != before_scores
            return reg.model_reads[(kind, key)].follows(moved, changed)

        segments = facts.segments
        for round_, steps in enumerate(rounds):
            for step in steps:
                if failed and step.key in failed:
                    continue
                if not step.always and not step.reads.follows(moved, state_changed):
                    continue
                try:
                    member = step.holds(facts, evaluate)
                except Exception as exc:  # one broken segment must not stop the others
                    failed[step.key] = f"{type(exc).__name__}: {exc}"
                    continue
                if member != (step.key in segments):
                    moved.add(step.key)
                    if member:
                        segments.add(step.key)
                    else:
                        segments.discard(step.key)
            if round_ == 1:
                break
            for key, scoring in reg.score_models.items():
                if due("score_model", key, before_scores):
                    result = scoring.score(facts, evaluate)
                    facts.scores[key] = (result.score, result.temperature)
            for key, model in reg.stage_models.items():
                if not due("stage_model", key, before_stages):
                    continue
                stage = model.stage_for(facts, evaluate)
                facts.stages[key] = stage
                facts.stages_ever.setdefault(key, set()).add(stage)
            state_changed = facts.stages != before_stages or facts.scores != before_scores
            if not (reg.uses_state and state_changed):
                break

        changes = Changes()
        if moved:
            entered, exited = segments - before_segments, before_segments - segments
            if failed:
                entered, exited = entered - failed.keys(), exited - failed.keys()
            changes.entered = [(k, facts.id) for k in sorted(entered)]
            changes.exited = [(k, facts.id) for k in sorted(exited)]
        for key in reg.stage_models:
            before, after = before_stages.get(key), facts.stages.get(key)
            if after is not None and after != before:
                changes.stages.append((key, facts.id, before, after))
        for key in reg.score_models:
            change = _score_change(env, key, facts.id, before_scores, facts.scores[key])
            if change is not None:
                changes.scores.append(change)
        return changes

    # -- whole population -------------------------------------------------------------------
    def evaluate_all(self) -> EvaluationReport:
        """Re-evaluate every definition for every contact (the scheduled run)."""
        report = EvaluationReport()
        self.refresh_computed_state()
        with self.db.write() as conn:
            reg = self.registry(conn)
            self._mark_problems(conn, reg)
        report.segments += [
            SegmentResult(key, error=problem)
            for (kind, key), problem in sorted(reg.problems.items())
            if kind == "segment"
        ]
        first = [k for k in reg.order if k not in reg.uses_state]
        later = [k for k in reg.order if k in reg.uses_state]
        report.segments += self._evaluate_segments(reg, first)
        report.score_changes, report.stage_changes = self._evaluate_state()
        report.segments += self._evaluate_segments(reg, later)
        return report

    def _evaluate_segments(self, reg: Registry, keys: list[str]) -> list[SegmentResult]:
        """`evaluate_segment` for each of `keys` (in dependency order), `self.threads` at
        a time: each query runs in its own snapshot on a core of its own (the drivers
        release the GIL while the database works), writes take turns, and a segment
        starts once the segments it uses are written. Results in the order of `keys`."""
        if self.threads <= 1 or len(keys) <= 1:
            return [self.evaluate_segment(key) for key in keys]
        wanted = set(keys)
        uses = {key: reg.reads[key].segments & wanted for key in keys}
        done: dict[str, SegmentResult] = {}
        pending = list(keys)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="nurture-segment") as pool:
            running: dict[Future[SegmentResult], str] = {}
            while pending or running:
                for key in [k for k in pending if uses[k] <= done.keys()]:
                    if len(running) >= self.threads:
                        break
                    pending.remove(key)
                    running[pool.submit(self.evaluate_segment, key)] = key
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()
        return [done[key] for key in keys]

    def refresh_computed_state(self) -> None:
        """Recompute the population values computed traits share (RFM quintile bounds)."""
        now = self.clock.now()
        with self.db.write() as conn:
            reg = self.registry(conn)
            env = reg.env(now, self.computed_state(conn))
            rows = []
            for key, trait in reg.computed.items():
                value = compute_state(conn, trait, env)
                if value is not None:
                    rows.append({"key": key, "value": value, "computed_at": now})
            upsert_rows(conn, t.evaluation_state, rows, keys=["key"])

    def evaluate_segment(self, key: str) -> SegmentResult:
        """Evaluate one segment for the whole population in SQL and store the diff.

        The query runs in a read transaction, holding no lock, so neither ingest nor
        real-time evaluation waits for it. The write then takes the write lock (SQLite) or
        the evaluation lock exclusively (PostgreSQL) and leaves out the contacts whose
        events changed since the query's snapshot: they are queued, and real-time
        evaluation decides them with the newer data."""
        now = self.clock.now()
        started = self.clock.monotonic()
        with self.db.read() as conn:
            read = self._population_read(conn, key, now)
        with self.db.write() as conn:
            self._lock_evaluation(conn)
            return self._population_write(conn, read, now, started)

    def _population_read(self, conn: Connection, key: str, now: datetime) -> _PopulationRead:
        """The segment's members now, by SQL, and the newest event id this snapshot saw."""
        read = _PopulationRead(key)
        reg = self.registry(conn)
        read.problem = reg.problems.get(("segment", key))
        if read.problem is not None:
            return read
        segment = reg.segments.get(key)
        if segment is None:
            raise NotFound(f"segment {key!r} does not exist", path="key")
        env = reg.env(now, self.computed_state(conn))
        read.newest_event = _newest_event(conn)
        try:
            with conn.begin_nested():
                query = SqlCompiler(env, self.db.backend).members(segment.where)
                read.members = set(conn.execute(query).scalars())
        except Exception as exc:
            read.error = f"{type(exc).__name__}: {exc}"
        return read

    def _population_write(
        self, conn: Connection, read: _PopulationRead, now: datetime, started: float
    ) -> SegmentResult:
        key = read.key
        result = SegmentResult(key)
        self._mark_problems(conn, self.registry(conn))
        if read.problem is not None:
            result.error = read.problem
            return result
        if read.error is not None:
            result.error = read.error
            log.warning("segment %s failed: %s", key, read.error)
            DefinitionStore.mark(conn, "segment", key, error=read.error, evaluated_at=now)
            return result
        m = t.segment_memberships.c
        current = set(conn.execute(select(m.contact_id).where(m.segment_key == key)).scalars())
        changed = _changed_since(conn, read.newest_event)
        changes = Changes(
            entered=[(key, c) for c in sorted(read.members - current - changed)],
            exited=[(key, c) for c in sorted(current - read.members - changed)],
        )
        apply(conn, changes, now)
        self._bump_epoch(conn)
        DefinitionStore.mark(conn, "segment", key, error=None, evaluated_at=now)
        result.members = len(read.members)
        result.entered, result.exited = len(changes.entered), len(changes.exited)
        result.seconds = self.clock.monotonic() - started
        return result

    def _evaluate_state(self, batch: int = 1000) -> tuple[int, int]:
        """Scores, then stages, for the whole population: returns (score changes, stage
        changes). Scores are computed in memory for the contacts that can have one (a score
        row already, an event a rule counts, or a rule's condition true); stages in SQL."""
        return self._evaluate_scores(batch), self._evaluate_stages()

    def _evaluate_scores(self, batch: int) -> int:
        with self.db.read() as conn:
            reg = self.registry(conn)
            if not reg.score_models:
                return 0
            env = reg.env(self.clock.now(), self.computed_state(conn))
            candidates = self._score_candidates(conn, reg, env)
        changed = 0
        for i in range(0, len(candidates), batch):
            now = self.clock.now()
            chunk = candidates[i : i + batch]
            with self.db.write() as conn:
                self._lock_evaluation(conn)
                self._lock_contacts(conn, chunk)
                reg = self.registry(conn)
                env = reg.env(now, self.computed_state(conn))
                evaluate = Evaluator(env)
                changes = Changes()
                for facts in load_facts(
                    conn, chunk, event_names=reg.event_names, now=now, parts=reg.fact_parts
                ).values():
                    for key, scoring in reg.score_models.items():
                        result = scoring.score(facts, evaluate)
                        now_score = (result.score, result.temperature)
                        change = _score_change(env, key, facts.id, facts.scores, now_score)
                        if change is not None:
                            changes.scores.append(change)
                apply(conn, changes, now)
                self._bump_epoch(conn)
                changed += len(changes.scores)
        return changed

    def _score_candidates(self, conn: Connection, reg: Registry, env: Env) -> list[int]:
        """Live contacts whose score can be other than 0: those with a stored score, an
        event some rule counts, or a rule condition that holds."""
        compiler = SqlCompiler(env, self.db.backend)
        c, sc = t.contacts.c, t.contact_scores.c
        found: set[int] = set(conn.execute(select(sc.contact_id).distinct()).scalars())
        for scoring in reg.score_models.values():
            for rule in scoring.rules:
                if isinstance(rule, EventRule):
                    alias = t.events.alias("r")
                    since = None
                    if rule.within_last is not None:
                        since = compiler.now_us - rule.within_last // timedelta(microseconds=1)
                    where = compiler.event_match(alias, rule.event, rule.type, rule.where, since)
                    found.update(
                        conn.execute(select(alias.c.contact_id).where(*where).distinct()).scalars()
                    )
                else:
                    found.update(conn.execute(compiler.members(rule.when)).scalars())
        if not found:
            return []
        live = set(conn.execute(select(c.id).where(c.merged_into.is_(None))).scalars())
        return sorted(found & live)

    def _evaluate_stages(self) -> int:
        """Every stage model for every contact, one SQL query per model, outside any lock;
        the write then changes only contacts whose stored stage is still the one the query
        saw and that have no newer events (real time decides those)."""
        now = self.clock.now()
        with self.db.read() as conn:
            read = self._stages_read(conn, now)
        if read is None:
            return 0
        with self.db.write() as conn:
            self._lock_evaluation(conn)
            return self._stages_write(conn, read, now)

    def _stages_read(self, conn: Connection, now: datetime) -> _StagesRead | None:
        reg = self.registry(conn)
        if not reg.stage_models:
            return None
        c = t.contacts.c
        env = reg.env(now, self.computed_state(conn))
        compiler = SqlCompiler(env, self.db.backend)
        read = _StagesRead(_newest_event(conn))
        for key, model in reg.stage_models.items():
            query = select(c.id, model.sql_stage(compiler)).where(c.merged_into.is_(None))
            read.stages[key] = {int(row[0]): str(row[1]) for row in conn.execute(query)}
            read.seen[key] = self._stored_stages(conn, key)
        return read

    def _stages_write(self, conn: Connection, read: _StagesRead, now: datetime) -> int:
        changed = _changed_since(conn, read.newest_event)
        changes = Changes()
        for key, now_stage in read.stages.items():
            stored = self._stored_stages(conn, key)
            seen = read.seen[key]
            changes.stages += [
                (key, contact_id, stored.get(contact_id), stage)
                for contact_id, stage in sorted(now_stage.items())
                if stored.get(contact_id) != stage
                and stored.get(contact_id) == seen.get(contact_id)
                and contact_id not in changed
            ]
        apply(conn, changes, now)
        self._bump_epoch(conn)
        return len(changes.stages)

    @staticmethod
    def _stored_stages(conn: Connection, model: str) -> dict[int, str]:
        s = t.contact_stages.c
        return {
            int(row[0]): str(row[1])
            for row in conn.execute(select(s.contact_id, s.stage).where(s.model == model))
        }

    # -- previews -------------------------------------------------------------------------
    def preview(self, condition: Condition, *, sample: int = 10) -> tuple[int, list[int]]:
        """How many live contacts match `condition` now, and the first few, unsaved."""
        now = self.clock.now()
        with self.db.read() as conn:
            reg = self.registry(conn)
            problem = reg.reference_problem(condition)
            if problem:
                raise ValidationError(problem, path="where", code="unknown_reference")
            env = reg.env(now, self.computed_state(conn))
            members = SqlCompiler(env, self.db.backend).members(condition).subquery()
            count = conn.execute(select(func.count()).select_from(members)).scalar_one()
            ids = list(
                conn.execute(select(members.c.id).order_by(members.c.id).limit(sample)).scalars()
            )
        return int(count), ids

    def contact_state(self, contact_id: int) -> dict[str, Any]:
        """A contact's stored memberships, stages and scores, and its computed traits now."""
        now = self.clock.now()
        with self.db.read() as conn:
            m, s, sc = t.segment_memberships.c, t.contact_stages.c, t.contact_scores.c
            reg = self.registry(conn)
            computed: dict[str, Any] = {}
            if reg.computed:
                facts = load_facts(conn, [contact_id], event_names=reg.event_names, now=now)
                if contact_id in facts:
                    env = reg.env(now, self.computed_state(conn))
                    computed = computed_values(facts[contact_id], env)
            return {
                "computed": computed,
                "segments": [
                    {"key": r.segment_key, "enteredAt": r.entered_at.isoformat()}
                    for r in conn.execute(
                        select(m.segment_key, m.entered_at)
                        .where(m.contact_id == contact_id)
                        .order_by(m.segment_key)
                    )
                ],
                "stages": {
                    r.model: {"stage": r.stage, "since": r.since.isoformat()}
                    for r in conn.execute(
                        select(s.model, s.stage, s.since).where(s.contact_id == contact_id)
                    )
                },
                "scores": {
                    r.model: {"score": r.score, "temperature": r.temperature}
                    for r in conn.execute(
                        select(sc.model, sc.score, sc.temperature).where(
                            one_of(conn, sc.contact_id, [contact_id])
                        )
                    )
                },
            }


def _newest_event(conn: Connection) -> int:
    """The newest event id a snapshot sees (0 for none)."""
    return int(conn.execute(select(func.coalesce(func.max(t.events.c.id), 0))).scalar_one())


def _changed_since(conn: Connection, newest_event: int) -> set[int]:
    """Contacts with events newer than a snapshot whose newest event was `newest_event`:
    population runs leave them to real-time evaluation. Ingest transactions run one at a
    time on both backends, so event ids grow in commit order and "newer than the snapshot"
    is "id above its newest". Evaluation's own system events change no data."""
    e = t.events.c
    # SQLite would otherwise read the whole (contact_id, timestamp) index for DISTINCT
    # (0.57 s on 10M events) instead of the few rows after `newest_event` (4 ms).
    contact = unindexed(conn.dialect.name, e.contact_id)
    query = select(contact).where(e.id > newest_event, e.type != "system").distinct()
    return set(conn.execute(query).scalars())


def _score_change(
    env: Env,
    model: str,
    contact_id: int,
    stored: dict[str, tuple[float, str]],
    now: tuple[float, str],
) -> tuple[str, int, float, str, str] | None:
    """The change from a stored score to `now` (score, temperature), or None. No stored
    score is a score of 0, in the band 0 falls in."""
    before = stored.get(model, (0.0, env.temperature_of(model, 0.0)))
    if now == before:
        return None
    return (model, contact_id, now[0], before[1], now[1])
