"""Every definition in force, parsed and checked together: references resolve, segments
form no cycle, and segments are ordered so that each comes after those it uses.

A definition that does not parse or refers to something missing is left out with its
problem (the engine marks it failed); the others go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nurture.conditions.computed import Clv, ComputedTrait, parse_computed
from nurture.conditions.env import Env
from nurture.conditions.memory import Holds, compiled
from nurture.conditions.model import (
    ComputedCondition,
    Condition,
    ConsentCondition,
    ScoreCondition,
    SegmentCondition,
    StageCondition,
    TraitCondition,
    walk,
)
from nurture.conditions.references import condition_references
from nurture.errors import NurtureError
from nurture.lifecycle.scoring import ConditionRule, ScoreModel, parse_score_model
from nurture.lifecycle.stages import StageModel, parse_stage_model
from nurture.segments.definitions import SegmentDefinition, StoredDefinition, parse_segment

Ref = tuple[str, str]  # (kind, key)

# The operators that mean something for each type of computed value.
OPERATORS_FOR = {
    "number": ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists"),
    "time": ("within_last", "within_next", "before", "after", "exists"),
    "boolean": ("eq", "ne", "exists"),
}


@dataclass(frozen=True)
class Reads:
    """What a segment's (or a stage or score model's) result can change with, besides
    time: the events it reads, the contact's profile, other segments, stored stages and
    scores."""

    events: frozenset[tuple[str, str]]
    any_event: bool  # computed traits: any event may move them (last seen, counts)
    profile: bool  # traits and consent
    segments: frozenset[str]
    state: bool  # stages or scores

    def touched_by(self, arrived: Set[tuple[str, str]]) -> bool:
        """Can events of these (type, name) pairs change the result?"""
        if self.any_event and arrived:
            return True
        if self.profile and any(kind == "identify" for kind, _ in arrived):
            return True
        for kind, name in self.events:
            if (kind, name) in arrived or (name == "*" and any(k == kind for k, _ in arrived)):
                return True
        return False

    def follows(self, moved: Set[str], state_changed: bool) -> bool:
        """Can the result change with what moved earlier in the same evaluation: these
        segments, and stages or scores when `state_changed`?"""
        return bool((moved and self.segments & moved) or (self.state and state_changed))


@dataclass(frozen=True, slots=True)
class Step:
    """One segment in a contact's evaluation (`Registry.plan`)."""

    key: str
    holds: Holds
    reads: Reads
    # Evaluated in any case (the arrivals can change it), or only when a segment it reads
    # moved, or a stage or score it reads changed, in the same evaluation.
    always: bool


# The steps of a contact's first round, and of its second (after stages and scores).
Plan = tuple[tuple[Step, ...], tuple[Step, ...]]


@dataclass
class Registry:
    segments: dict[str, SegmentDefinition] = field(default_factory=dict)
    computed: dict[str, ComputedTrait] = field(default_factory=dict)
    stage_models: dict[str, StageModel] = field(default_factory=dict)
    score_models: dict[str, ScoreModel] = field(default_factory=dict)
    # Segments in evaluation order: each after the segments its condition uses.
    order: list[str] = field(default_factory=list)
    # Definitions left out, with why.
    problems: dict[Ref, str] = field(default_factory=dict)
    # Segments whose condition (directly or through other segments) reads stages or
    # scores: re-evaluated after those change in the same round.
    uses_state: set[str] = field(default_factory=set)
    event_names: set[tuple[str, str]] = field(default_factory=set)
    reads: dict[str, Reads] = field(default_factory=dict)
    # The same for each stage model and score model, by (kind, key).
    model_reads: dict[Ref, Reads] = field(default_factory=dict)
    # The optional parts of a contact's facts (facts.OPTIONAL_PARTS) some definition reads.
    fact_parts: frozenset[str] = frozenset()
    version: int = 0
    _touched: dict[frozenset[tuple[str, str]], frozenset[str]] = field(
        default_factory=dict, repr=False
    )
    _touched_models: dict[frozenset[tuple[str, str]], frozenset[Ref]] = field(
        default_factory=dict, repr=False
    )
    _plans: dict[frozenset[tuple[str, str]] | None, Plan] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, stored: Iterable[StoredDefinition], version: int = 0) -> Registry:
        reg = cls(version=version)
        parsers: dict[str, Any] = {
            "segment": parse_segment,
            "computed": parse_computed,
            "stage_model": parse_stage_model,
            "score_model": parse_score_model,
        }
        targets: dict[str, dict[str, Any]] = {
            "segment": reg.segments,
            "computed": reg.computed,
            "stage_model": reg.stage_models,
            "score_model": reg.score_models,
        }
        for row in stored:
            if row.kind not in parsers:
                continue  # not evaluation's (templates)
            try:
                parsed = parsers[row.kind]({"key": row.key, **row.body})
            except NurtureError as exc:
                reg.problems[(row.kind, row.key)] = str(exc)
                continue
            targets[row.kind][row.key] = parsed
        reg._check()
        return reg

    # -- conditions of every definition -------------------------------------------------
    def conditions(self) -> Iterator[tuple[Ref, Condition]]:
        for key, segment in self.segments.items():
            yield ("segment", key), segment.where
        for key, model in self.stage_models.items():
            for stage in model.stages:
                if stage.when is not None:
                    yield ("stage_model", key), stage.when
        for key, scoring in self.score_models.items():
            for rule in scoring.rules:
                if isinstance(rule, ConditionRule):
                    yield ("score_model", key), rule.when

    def default_stage_model(self) -> str | None:
        return next(iter(self.stage_models)) if len(self.stage_models) == 1 else None

    def _check(self) -> None:
        # Drop definitions until every reference resolves: dropping one can break others.
        while True:
            broken: dict[Ref, str] = {}
            for ref, condition in self.conditions():
                if ref in broken:
                    continue
                problem = self.reference_problem(condition)
                if problem:
                    broken[ref] = problem
            for ref, key in self._cycles():
                broken.setdefault(ref, key)
            if not broken:
                break
            owners: dict[str, dict[str, Any]] = {
                "segment": self.segments,
                "stage_model": self.stage_models,
                "score_model": self.score_models,
            }
            for (kind, key), problem in broken.items():
                self.problems[(kind, key)] = problem
                owners[kind].pop(key, None)
        self.order = self._topological()
        self.uses_state = self._state_users()
        self.reads = {key: _reads([segment.where]) for key, segment in self.segments.items()}
        self.model_reads = {}
        for key, model in self.stage_models.items():
            whens = [stage.when for stage in model.stages if stage.when is not None]
            # A stage condition naming no model reads the model itself.
            self.model_reads[("stage_model", key)] = _reads(whens, itself={None, key})
        for key, scoring in self.score_models.items():
            rules = [rule.when for rule in scoring.rules if isinstance(rule, ConditionRule)]
            self.model_reads[("score_model", key)] = _reads(rules, scoring.references().events)
        self.event_names = set()
        for _, condition in self.conditions():
            self.event_names |= condition_references([condition]).events
        for trait in self.computed.values():
            self.event_names |= trait.event_names()
        for scoring in self.score_models.values():
            self.event_names |= scoring.references().events
        self.fact_parts = self._fact_parts()

    def touched(self, arrived: frozenset[tuple[str, str]]) -> frozenset[str]:
        """The segments whose result events of these (type, name) pairs can change
        (`Reads.touched_by`), remembered per set: a round meets few distinct sets."""
        found = self._touched.get(arrived)
        if found is None:
            found = frozenset(k for k, reads in self.reads.items() if reads.touched_by(arrived))
            if len(self._touched) < 10_000:
                self._touched[arrived] = found
        return found

    def plan(self, arrived: frozenset[tuple[str, str]] | None) -> Plan:
        """The segments one contact's evaluation goes through, in order, for each round:
        those the arrivals can change (all of them when `arrived` is None: a full
        evaluation) and those that may follow a segment, stage or score moved in that
        evaluation; remembered per set, as `touched`."""
        found = self._plans.get(arrived)
        if found is None:
            touched = None if arrived is None else self.touched(arrived)
            steps = []
            for key in self.order:
                reads = self.reads[key]
                always = touched is None or key in touched
                if always or reads.segments or reads.state:
                    steps.append(Step(key, compiled(self.segments[key].where), reads, always))
            again = tuple(step for step in steps if step.key in self.uses_state)
            found = (tuple(steps), again)
            if len(self._plans) < 10_000:
                self._plans[arrived] = found
        return found

    def touched_models(self, arrived: frozenset[tuple[str, str]]) -> frozenset[Ref]:
        """The stage and score models (`("stage_model", key)`, `("score_model", key)`)
        whose result events of these (type, name) pairs can change, as `touched`."""
        found = self._touched_models.get(arrived)
        if found is None:
            reads = self.model_reads.items()
            found = frozenset(ref for ref, r in reads if r.touched_by(arrived))
            if len(self._touched_models) < 10_000:
                self._touched_models[arrived] = found
        return found

    def _fact_parts(self) -> frozenset[str]:
        parts: set[str] = set()
        for _, condition in self.conditions():
            for node in walk(condition):
                if isinstance(node, ConsentCondition):
                    parts.add("consents")
                if isinstance(node, StageCondition) and node.ever:
                    parts.add("stages_ever")
        if any(isinstance(trait, Clv) for trait in self.computed.values()):
            parts.add("clv")
        return frozenset(parts)

    def reference_problem(self, condition: Condition) -> str | None:
        """Why `condition` cannot be evaluated here (a missing segment, ...), or None."""
        for node in walk(condition):
            if isinstance(node, SegmentCondition) and node.segment not in self.segments:
                return f"segment {node.segment!r} does not exist"
            if isinstance(node, ComputedCondition):
                trait = self.computed.get(node.computed)
                if trait is None:
                    return f"computed trait {node.computed!r} is not declared"
                fits = OPERATORS_FOR.get(trait.returns, ())
                if node.operator not in fits:
                    return (
                        f"computed trait {node.computed!r} is a {trait.returns}: "
                        f"use one of {', '.join(fits)}"
                    )
            if isinstance(node, StageCondition):
                model_key = node.model or self.default_stage_model()
                if model_key is None:
                    return f"stage {node.stage!r}: name its model (`model:`); there are " + (
                        f"{len(self.stage_models)} stage models" if self.stage_models else "none"
                    )
                model = self.stage_models.get(model_key)
                if model is None:
                    return f"stage model {model_key!r} does not exist"
                if node.stage not in model.keys:
                    return f"stage model {model_key!r} has no stage {node.stage!r}"
            if isinstance(node, ScoreCondition):
                scoring = self.score_models.get(node.score)
                if scoring is None:
                    return f"score model {node.score!r} does not exist"
                names = [name for name, _ in scoring.bands()]
                if node.temperature is not None and node.temperature not in names:
                    return f"score model {node.score!r} has no temperature {node.temperature!r}"
        return None

    def _uses(self, key: str) -> list[str]:
        return sorted(condition_references([self.segments[key].where]).segments)

    def _cycles(self) -> list[tuple[Ref, str]]:
        found: list[tuple[Ref, str]] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(key: str, path: list[str]) -> None:
            state[key] = 1
            for used in self._uses(key):
                if used not in self.segments:
                    continue
                if state.get(used) == 1:
                    cycle = [*path[path.index(used) :], used]
                    for member in cycle[:-1]:
                        found.append(
                            (("segment", member), "segments form a cycle: " + " → ".join(cycle))
                        )
                elif used not in state:
                    visit(used, [*path, used])
            state[key] = 2

        for key in sorted(self.segments):
            if key not in state:
                visit(key, [key])
        return found

    def _topological(self) -> list[str]:
        order: list[str] = []
        done: set[str] = set()

        def visit(key: str) -> None:
            if key in done:
                return
            done.add(key)
            for used in self._uses(key):
                if used in self.segments:
                    visit(used)
            order.append(key)

        for key in sorted(self.segments):
            visit(key)
        return order

    def _state_users(self) -> set[str]:
        users: set[str] = set()
        for key in self.order:  # used segments come first
            for node in walk(self.segments[key].where):
                if isinstance(node, StageCondition | ScoreCondition) or (
                    isinstance(node, SegmentCondition) and node.segment in users
                ):
                    users.add(key)
                    break
        return users

    def env(self, now: datetime, computed_state: dict[str, object] | None = None) -> Env:
        return Env(
            now=now,
            score_bands={key: model.bands() for key, model in self.score_models.items()},
            default_stage_model=self.default_stage_model(),
            computed=self.computed,
            computed_state=computed_state or {},
        )


def _reads(
    conditions: list[Condition],
    events: frozenset[tuple[str, str]] = frozenset(),
    *,
    itself: Set[str | None] = frozenset(),
) -> Reads:
    """What these conditions (and `events`, counted by score rules) read; a stage model's
    own stages (`itself`) are not state that moves before it."""
    refs = condition_references(conditions)
    nodes = [node for condition in conditions for node in walk(condition)]
    return Reads(
        events=refs.events | events,
        any_event=bool(refs.computed),
        profile=any(isinstance(n, TraitCondition | ConsentCondition) for n in nodes),
        segments=refs.segments,
        state=bool(refs.scores or refs.stage_models - itself),
    )
