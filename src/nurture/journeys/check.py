"""The rules that look at a journey as a whole: every target exists, every step can be
reached, every loop waits and has a way out, and what it names (segments, templates,
score models) exists. Each problem names the path of the field at fault."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nurture.conditions.model import Condition
from nurture.errors import ValidationError
from nurture.journeys.model import (
    END,
    BranchStep,
    EventMatch,
    EventTrigger,
    ExitStep,
    Journey,
    NotifyStep,
    ScheduleTrigger,
    ScoreStep,
    SegmentExit,
    SegmentTrigger,
    SendStep,
    SplitStep,
    WaitStep,
)


@dataclass
class Catalog:
    """What a journey may refer to by name."""

    segments: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    score_models: set[str] = field(default_factory=set)
    # The condition language's own reference check (segments, stages, computed traits).
    reference_problem: Callable[[Condition], str | None] = lambda _c: None


def edges(journey: Journey, index: int) -> list[tuple[str, str]]:
    """(field path, target step id or `end`) for every way out of steps[index]."""
    step = journey.steps[index]
    here = f"steps[{index}]"
    following = journey.following(step.id)
    match step:
        case ExitStep():
            return []
        case BranchStep():
            out = [(f"{here}.cases[{i}].next", c.next) for i, c in enumerate(step.cases)]
            return [*out, (f"{here}.else", step.else_ or following)]
        case SplitStep():
            return [(f"{here}.paths[{i}].next", p.next) for i, p in enumerate(step.paths)]
        case WaitStep() if step.until_event is not None:
            return [
                (f"{here}.on_event", step.on_event or following),
                (f"{here}.on_timeout", step.on_timeout or following),
            ]
        case _:
            return [(f"{here}.next", following)]


def problems(journey: Journey, catalog: Catalog) -> list[ValidationError]:
    """Every problem of the journey as a whole (its shape is already valid)."""
    out: list[ValidationError] = []

    def bad(path: str, message: str) -> None:
        out.append(ValidationError(message, path=path, code="invalid_journey"))

    index: dict[str, int] = {}
    for i, step in enumerate(journey.steps):
        if step.id == END:
            bad(f"steps[{i}].id", f"{END!r} is reserved: it names the end of the journey")
        elif step.id in index:
            bad(f"steps[{i}].id", f"duplicate step id {step.id!r}")
        index.setdefault(step.id, i)
    graph: dict[str, list[str]] = {}
    for i, step in enumerate(journey.steps):
        targets = []
        for path, target in edges(journey, i):
            if target != END and target not in index:
                known = ", ".join(sorted(index))
                bad(path, f"unknown step {target!r} (known: {known}, or end)")
            else:
                targets.append(target)
        graph.setdefault(step.id, targets)
    reached = _reachable(journey.steps[0].id, graph)
    for i, step in enumerate(journey.steps):
        if step.id not in reached:
            bad(f"steps[{i}]", f"step {step.id!r} cannot be reached from the first step")
    ways_out = bool(journey.goal or journey.exit)
    for loop in _loops(graph):
        first = min(index[s] for s in loop)
        names = " → ".join(sorted(loop, key=index.__getitem__))
        if not any(_waits(journey.steps[index[s]]) for s in loop):
            bad(
                f"steps[{first}]",
                f"the steps {names} loop without a `for` or `until_event` wait: "
                "an enrolment would run them over and over at once",
            )
        leaves = any(t not in loop for s in loop for t in graph[s])
        if not leaves and not ways_out:
            bad(
                f"steps[{first}]",
                f"the steps {names} loop with no way out: add a branch out of the loop, "
                "a goal or an exit rule",
            )
    for path, segment in _segments(journey):
        if segment not in catalog.segments:
            bad(path, f"unknown segment {segment!r}")
    for path, condition in _conditions(journey):
        problem = catalog.reference_problem(condition)
        if problem:
            bad(path, problem)
    if not isinstance(journey.trigger, EventTrigger):
        for path, match in _matches(journey):
            if match.same:
                bad(
                    f"{path}.same",
                    "`same` compares with the properties of the event that started the "
                    "enrolment, and this journey is not triggered by an event",
                )
    for path, template in _templates(journey):
        if template not in catalog.templates:
            bad(path, f"unknown template {template!r}: add templates/{template}.* to the project")
    for i, step in enumerate(journey.steps):
        if isinstance(step, ScoreStep):
            if step.model is None and len(catalog.score_models) != 1:
                bad(f"steps[{i}].model", "name the score model (there is not exactly one)")
            elif step.model is not None and step.model not in catalog.score_models:
                bad(f"steps[{i}].model", f"unknown score model {step.model!r}")
        winner = step.winner if isinstance(step, SplitStep) else None
        if winner is not None and winner.metric == "converted" and journey.goal is None:
            bad(
                f"steps[{i}].winner.metric",
                "`converted` counts the journey's goal, and this journey has none: "
                "add a goal, or choose opened or clicked",
            )
    return out


def check(journey: Journey, catalog: Catalog) -> None:
    """Raise the first problem of `journey`, if any."""
    found = problems(journey, catalog)
    if found:
        first = found[0]
        if len(found) > 1:
            first.message += f" (and {len(found) - 1} more)"
        raise first


def _waits(step: object) -> bool:
    return isinstance(step, WaitStep) and (step.for_ is not None or step.until_event is not None)


def _reachable(start: str, graph: dict[str, list[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), []):
            if target != END and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _loops(graph: dict[str, list[str]]) -> list[set[str]]:
    """The strongly connected components that hold a cycle (Tarjan, iterative)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in order:
            continue
        work = [(root, iter(graph[root]))]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target == END or target not in graph:
                    continue
                if target not in order:
                    order[target] = low[target] = len(order)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], order[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == order[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    out.append(component)
    return out


def _segments(journey: Journey) -> Iterator[tuple[str, str]]:
    if isinstance(journey.trigger, SegmentTrigger):
        yield "trigger.segment", journey.trigger.segment
    for i, rule in enumerate(journey.exit):
        if isinstance(rule, SegmentExit):
            yield f"exit[{i}].segment", rule.segment


def _matches(journey: Journey) -> Iterator[tuple[str, EventMatch]]:
    if journey.goal is not None:
        yield "goal", journey.goal
    for i, rule in enumerate(journey.exit):
        if isinstance(rule, EventMatch):
            yield f"exit[{i}]", rule
    for i, step in enumerate(journey.steps):
        if isinstance(step, WaitStep):
            if step.until_event is not None:
                yield f"steps[{i}].until_event", step.until_event
            for j, match in enumerate(step.restart_on):
                yield f"steps[{i}].restart_on[{j}]", match


def _conditions(journey: Journey) -> Iterator[tuple[str, Condition]]:
    if journey.entry.if_ is not None:
        yield "entry.if", journey.entry.if_
    if isinstance(journey.trigger, ScheduleTrigger):
        yield "trigger.audience", journey.trigger.audience
    for i, step in enumerate(journey.steps):
        if isinstance(step, BranchStep):
            for j, case in enumerate(step.cases):
                yield f"steps[{i}].cases[{j}].if", case.if_
    for path, match in _matches(journey):
        if match.if_ is not None:
            yield f"{path}.if", match.if_


def _templates(journey: Journey) -> Iterator[tuple[str, str]]:
    for i, step in enumerate(journey.steps):
        if isinstance(step, SendStep):
            if step.template is not None:
                yield f"steps[{i}].template", step.template
            for j, variant in enumerate(step.variants or []):
                yield f"steps[{i}].variants[{j}].template", variant.template
        elif isinstance(step, NotifyStep) and step.template is not None:
            yield f"steps[{i}].template", step.template
