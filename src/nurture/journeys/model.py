"""The journey language: pydantic models of a journey definition, written in YAML or JSON.

A journey has one trigger (leading key, like conditions: `event`, `segment`, `date`,
`schedule`, `api`), entry rules, an optional goal, exit rules and a list of steps keyed
by `type`. A step goes on to its `next`, else to the step after it in the list, and the
last step ends the enrolment; `end` names the end explicitly. docs/journeys.md is the
reference; `check.py` holds the rules that look at the journey as a whole.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from nurture import localtime
from nurture.conditions.durations import Duration
from nurture.conditions.facts import TEXT_COLUMNS, TIME_COLUMNS
from nurture.conditions.model import (
    Condition,
    EventType,
    Path,
    PropertyFilter,
    check_path,
    validation_error,
)
from nurture.errors import ValidationError
from nurture.segments.definitions import check_key

END = "end"
RESERVED_TRAITS = (*TEXT_COLUMNS, *TIME_COLUMNS)
MAX_GOAL_WINDOW = timedelta(days=365)
CHANNELS = ("email", "sms", "push", "voice", "in_app")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _clock(value: str | None) -> str | None:
    if value is not None:
        localtime.parse_clock(value)
    return value


def _sexagesimal(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 10:00 as the number 600 (base 60): read it back.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return f"{value // 60:02d}:{value % 60:02d}"
    return value


ClockTime = Annotated[str, pydantic.BeforeValidator(_sexagesimal), pydantic.AfterValidator(_clock)]


class EventMatch(_Model):
    """Which events count: name, type, property filters, and properties that must equal
    those of the event that started the enrolment (`same: [cart_id]`)."""

    event: str = Field(min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)
    same: list[Path] = Field(default_factory=list)
    if_: Condition | None = Field(None, alias="if")


# -- triggers --------------------------------------------------------------------------
class EventTrigger(_Model):
    """Enter when the contact does an event (with property filters)."""

    event: str = Field(min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)


class SegmentTrigger(_Model):
    """Enter when the contact enters (or leaves) a segment."""

    segment: str
    on: Literal["entered", "exited"] = "entered"


class DateTrigger(_Model):
    """Enter at a local time relative to a date trait: `renewal_date` 90 days before at
    10:00 in the contact's timezone; `yearly` for birthdays and anniversaries."""

    date: Path
    before: Duration | None = None
    after: Duration | None = None
    at: ClockTime = "09:00"
    yearly: bool = False

    @model_validator(mode="after")
    def _one_offset(self) -> DateTrigger:
        for name in ("before", "after"):
            value = getattr(self, name)
            if value is not None and value % timedelta(days=1):
                raise ValueError(f"{name}: expected whole days, like 90d")
        if self.before is not None and self.after is not None:
            raise ValueError("give `before` or `after`, not both")
        return self

    @property
    def offset_days(self) -> int:
        if self.before is not None:
            return -self.before.days
        return self.after.days if self.after is not None else 0

    @property
    def clock(self) -> time:
        return localtime.parse_clock(self.at)


class ScheduleTrigger(_Model):
    """Enter everyone who matches `audience` each time a cron schedule fires."""

    schedule: str
    timezone: str = "UTC"
    audience: Condition

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleTrigger:
        localtime.Cron(self.schedule, self.timezone)
        return self


class ApiTrigger(_Model):
    """Enter only through the admin API (every journey also accepts API enrolments)."""

    api: Literal[True]


TRIGGER_KINDS = ("event", "segment", "date", "schedule", "api")


def _leading(kinds: tuple[str, ...], classes: dict[type, str]) -> Any:
    def kind(value: Any) -> str | None:
        if isinstance(value, dict):
            return next((k for k in kinds if k in value), None)
        return classes.get(type(value))

    return kind


Trigger = Annotated[
    (
        Annotated[EventTrigger, Tag("event")]
        | Annotated[SegmentTrigger, Tag("segment")]
        | Annotated[DateTrigger, Tag("date")]
        | Annotated[ScheduleTrigger, Tag("schedule")]
        | Annotated[ApiTrigger, Tag("api")]
    ),
    Discriminator(
        _leading(
            TRIGGER_KINDS,
            {
                EventTrigger: "event",
                SegmentTrigger: "segment",
                DateTrigger: "date",
                ScheduleTrigger: "schedule",
                ApiTrigger: "api",
            },
        ),
        custom_error_type="unknown_trigger",
        custom_error_message="expected a trigger: a mapping with one of the keys "
        + ", ".join(TRIGGER_KINDS),
    ),
]


# -- entry, goal, exits ------------------------------------------------------------------
class ReentryAfter(_Model):
    after: Duration


class Entry(_Model):
    """Who may enter, how often, and what share is held out as a control group."""

    if_: Condition | None = Field(None, alias="if")
    reentry: Literal["never", "always"] | ReentryAfter = "never"
    holdout: float = Field(0.0, ge=0.0, lt=1.0)


class Goal(EventMatch):
    """The event that converts an enrolment, within `within` of entry, with revenue read
    from a property of the goal event."""

    revenue: Path | None = None
    within: Duration = timedelta(days=30)

    @field_validator("within")
    @classmethod
    def _bounded(cls, value: timedelta) -> timedelta:
        if value > MAX_GOAL_WINDOW:
            raise ValueError("expected at most 365d: an attribution window of a year at most")
        return value


class EventExit(EventMatch):
    reason: str = ""


class SegmentExit(_Model):
    segment: str
    on: Literal["entered", "exited"] = "exited"
    reason: str = ""


ExitRule = Annotated[
    (Annotated[EventExit, Tag("event")] | Annotated[SegmentExit, Tag("segment")]),
    Discriminator(
        _leading(("event", "segment"), {EventExit: "event", SegmentExit: "segment"}),
        custom_error_type="unknown_exit",
        custom_error_message="expected an exit rule: a mapping with the key event or segment",
    ),
]


# -- steps --------------------------------------------------------------------------------
class _Step(_Model):
    id: str
    name: str = ""
    next: str | None = None

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_key(v)))


class WindowSpec(_Model):
    days: str | list[str] = "daily"
    from_: ClockTime = Field(alias="from")
    to: ClockTime

    @model_validator(mode="after")
    def _valid(self) -> WindowSpec:
        self.window()
        return self

    def window(self) -> localtime.Window:
        return localtime.Window.parse(self.days, self.from_, self.to)


class DateSpec(_Model):
    trait: Path
    before: Duration | None = None
    after: Duration | None = None
    at: ClockTime = "09:00"

    @property
    def offset(self) -> timedelta:
        if self.before is not None:
            return -self.before
        return self.after or timedelta(0)


class WaitStep(_Step):
    """Wait for a duration, until a local-time window opens, until a date trait, or for
    an event with a timeout (going on by whichever came first)."""

    type: Literal["wait"]
    for_: Duration | None = Field(None, alias="for")
    until_window: WindowSpec | None = None
    until_date: DateSpec | None = None
    until_event: EventMatch | None = None
    timeout: Duration | None = None
    on_event: str | None = None
    on_timeout: str | None = None
    # Events that start a `for` wait again from the moment they happened (reschedule).
    restart_on: list[EventMatch] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> WaitStep:
        given = [
            k
            for k in ("for_", "until_window", "until_date", "until_event")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of for, until_window, until_date, until_event")
        if self.until_event is not None and self.timeout is None:
            raise ValueError("until_event needs a timeout: a wait must have a way out")
        if self.until_event is None and (self.timeout or self.on_event or self.on_timeout):
            raise ValueError("timeout, on_event and on_timeout belong to until_event waits")
        if self.restart_on and self.for_ is None:
            raise ValueError("restart_on belongs to `for` waits")
        return self


class Variant(_Model):
    name: str
    template: str
    weight: float = Field(1.0, gt=0)


class SendStep(_Step):
    """Write one message to the outbox."""

    type: Literal["send"]
    channel: Literal["email", "sms", "push", "voice", "in_app"]
    template: str | None = None
    variants: list[Variant] | None = Field(None, min_length=2)
    kind: Literal["marketing", "transactional"] = "marketing"
    topic: str | None = None
    # Deliver at this time of day in the contact's timezone (the dispatcher holds it).
    at: ClockTime | None = None

    @model_validator(mode="after")
    def _one_template(self) -> SendStep:
        if (self.template is None) == (self.variants is None):
            raise ValueError("give a template or variants, not both")
        if self.variants and len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("variants need distinct names")
        return self


class Case(_Model):
    if_: Condition = Field(alias="if")
    next: str


class BranchStep(_Step):
    """Go to the first case whose condition holds, else to `else`."""

    type: Literal["branch"]
    cases: list[Case] = Field(min_length=1)
    else_: str | None = Field(None, alias="else")


class SplitPath(_Model):
    name: str
    weight: float = Field(gt=0)
    next: str


# -- split steps and their automatic winner (analytics/winners.py decides) --------------
class SplitWinner(_Model):
    """Send everyone down the best path once it beats every other significantly
    (Holm-adjusted two-proportion z-tests) and every path has `min_sample` contacts."""

    metric: Literal["converted", "opened", "clicked"] = "converted"
    min_sample: int = Field(1000, ge=10)
    confidence: float = Field(0.95, ge=0.8, le=0.999)
    # A worker looks at the figures again at most this often while undecided.
    check_every: Duration = timedelta(minutes=10)


class SplitStep(_Step):
    """Weighted random paths, the same for a contact every time (A/B tests)."""

    type: Literal["split"]
    paths: list[SplitPath] = Field(min_length=2)
    winner: SplitWinner | None = None

    @model_validator(mode="after")
    def _names(self) -> SplitStep:
        if len({p.name for p in self.paths}) != len(self.paths):
            raise ValueError("paths need distinct names")
        return self


# -- end split steps ----------------------------------------------------------------------


class UpdateStep(_Step):
    """Set or unset traits and add or remove tags (the `tags` trait, a list)."""

    type: Literal["update"]
    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[Path] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> UpdateStep:
        if not (self.set or self.unset or self.add_tags or self.remove_tags):
            raise ValueError("give at least one of set, unset, add_tags, remove_tags")
        for path in self.set:
            check_path(path)
        reserved = sorted(
            {p.split(".")[0] for p in [*self.set, *self.unset]} & set(RESERVED_TRAITS)
        )
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)}: reserved traits are set by identify calls, where "
                "they are validated, not by journeys"
            )
        return self


class ScoreStep(_Step):
    """Add (or take away) points on a score model."""

    type: Literal["score"]
    points: float
    model: str | None = None
    reason: str = ""

    @field_validator("points")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("expected points other than 0")
        return value


class HttpTarget(_Model):
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH", "GET", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    # The name of the environment variable holding the signing secret: credentials come
    # from configuration, never from definitions kept in git.
    secret_env: str | None = None
    timeout: Duration = timedelta(seconds=10)
    retries: int = Field(5, ge=0, le=20)


class WebhookStep(_Step, HttpTarget):
    """Call an HTTP endpoint, signed, with retries and backoff."""

    type: Literal["webhook"]
    body: Any = None


class NotifyStep(_Step):
    """Hand the contact to a person (an email to the team) or a CRM (a signed webhook)."""

    type: Literal["notify"]
    to: str | None = None
    webhook: HttpTarget | None = None
    note: str = ""
    template: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> NotifyStep:
        if (self.to is None) == (self.webhook is None):
            raise ValueError("give `to` (an email address) or `webhook`, not both")
        if self.to is not None and "@" not in self.to:
            raise ValueError("to: expected an email address")
        return self


class ExitStep(_Step):
    """End the enrolment here."""

    type: Literal["exit"]
    reason: str = ""


STEP_TYPES = ("wait", "send", "branch", "split", "update", "score", "webhook", "notify", "exit")
_STEP_TAG = re.compile(r"(steps\[\d+\])\.(?:" + "|".join(STEP_TYPES) + r")\b")

Step = Annotated[
    (
        WaitStep
        | SendStep
        | BranchStep
        | SplitStep
        | UpdateStep
        | ScoreStep
        | WebhookStep
        | NotifyStep
        | ExitStep
    ),
    Field(discriminator="type"),
]


class Journey(_Model):
    """One journey definition (a draft or a published version)."""

    key: str
    name: str = ""
    description: str = ""
    trigger: Trigger
    entry: Entry = Entry()
    goal: Goal | None = None
    exit: list[ExitRule] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    _check_key = field_validator("key")(classmethod(lambda cls, v: check_key(v)))

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    @cached_property
    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    @cached_property
    def _following(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for index, step in enumerate(self.steps):
            after = self.steps[index + 1].id if index + 1 < len(self.steps) else END
            out.setdefault(step.id, step.next if step.next is not None else after)
        return out

    def following(self, step_id: str) -> str:
        """Where a step goes when it names no other target: its `next`, else the step
        after it in the list, else the end."""
        return self._following[step_id]


def parse_journey(data: Any, *, path: str = "") -> Journey:
    """Validate a journey's shape; errors name the bad field (`steps[2].for`)."""
    if not isinstance(data, dict):
        raise ValidationError("expected a mapping with key, trigger and steps", path=path or None)
    steps = data.get("steps")
    if isinstance(steps, list):
        for i, step in enumerate(steps):
            kind = step.get("type") if isinstance(step, dict) else None
            if kind not in STEP_TYPES:
                where = f"{path}.steps[{i}].type" if path else f"steps[{i}].type"
                raise ValidationError(
                    f"unknown step type {kind!r}: expected one of " + ", ".join(STEP_TYPES),
                    path=where,
                    code="invalid_journey",
                )
    try:
        return Journey.model_validate(data)
    except pydantic.ValidationError as exc:
        error = validation_error(exc, path)
        error.code = "invalid_journey"
        if error.path:
            # A step's type tag sits between its index and its fields: steps[2].for.
            error.path = _STEP_TAG.sub(r"\1", error.path)
        raise error from None


def dump_journey(journey: Journey) -> dict[str, Any]:
    """The journey as plain data, as a person would write it."""
    data: dict[str, Any] = journey.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    return data
