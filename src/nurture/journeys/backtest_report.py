"""What a back-test reports: entries, the messages the journey would have written,
step runs, conversions (the control group's apart, for lift) and how enrolments ended."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

CAVEATS = [
    "Traits are today's (the store keeps no trait history), changed only by the journey's "
    "own update steps; segment memberships, stages, scores and consents are today's too.",
    "Re-entry rules count this back-test's enrolments only, not live ones from before it.",
    "Nothing is sent or called: webhooks count as answered 200; consent, suppression and "
    "send-time rules are not applied; score steps add no points events.",
    "Steps run exactly when due: no worker delay, no retries.",
]


@dataclass(frozen=True, slots=True)
class SimMessage:
    """A message the journey would have written to the outbox."""

    contact_id: int
    user_id: str | None
    step: str
    channel: str
    template: str | None
    variant: str | None
    kind: str
    recipient: str | None  # a person notified; None: the contact
    at: datetime


@dataclass(frozen=True, slots=True)
class Conversion:
    contact_id: int
    user_id: str | None
    at: datetime
    revenue: float | None
    control: bool


@dataclass(frozen=True, slots=True)
class Entrant:
    """Who entered, when, and how the enrolment stood at the end of the period."""

    contact_id: int
    user_id: str | None
    at: datetime
    control: bool
    status: str  # active | completed | converted | exited | failed
    reason: str | None
    step: str | None  # where a still active enrolment waits


@dataclass
class BacktestReport:
    """What the journey would have done in the period: entries, messages, step runs,
    conversions, and how enrolments ended or where they still wait."""

    journey: str
    start: datetime
    end: datetime
    events: int = 0  # events replayed
    entered: int = 0
    control: int = 0  # held out: enrolled, never messaged
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    messages: list[SimMessage] = field(default_factory=list)
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # step → outcome → runs
    conversions: list[Conversion] = field(default_factory=list)
    completed: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # by reason
    failed: Counter[str] = field(default_factory=Counter)  # by error
    active: Counter[str] = field(default_factory=Counter)  # by step ("control": held out)
    webhooks: Counter[str] = field(default_factory=Counter)  # "POST https://..." → calls
    points: dict[str, float] = field(default_factory=dict)  # by score model ("": default)
    entrants: list[Entrant] = field(default_factory=list)
    caveats: list[str] = field(default_factory=lambda: list(CAVEATS))

    @property
    def converted(self) -> int:
        """Conversions of the messaged group (the control group's are apart, for lift)."""
        return sum(1 for c in self.conversions if not c.control)

    @property
    def revenue(self) -> float:
        return sum(c.revenue or 0.0 for c in self.conversions if not c.control)

    def by_contact(self) -> dict[int, float]:
        """The messaged group's conversion revenue, by contact."""
        out: dict[int, float] = {}
        for c in self.conversions:
            if not c.control:
                out[c.contact_id] = out.get(c.contact_id, 0.0) + (c.revenue or 0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        control = [c for c in self.conversions if c.control]
        return {
            "journey": self.journey,
            "period": {"from": self.start.isoformat(), "to": self.end.isoformat()},
            **{k: getattr(self, k) for k in ("events", "entered", "control", "refused")},
            "messages": [_camel(m) for m in self.messages],
            "steps": self.steps,
            "conversions": {
                "count": self.converted,
                "revenue": self.revenue,
                "controlCount": len(control),
                "controlRevenue": sum(c.revenue or 0.0 for c in control),
                "items": [_camel(c) for c in self.conversions],
            },
            **{k: getattr(self, k) for k in ("completed", "exits", "failed", "active")},
            "webhooks": self.webhooks,
            "points": self.points,
            "entrants": [_camel(e) for e in self.entrants],
            "caveats": self.caveats,
        }


def _camel(item: Any) -> dict[str, Any]:
    """A record as the API writes it: camelCase keys (contactId), times in ISO 8601."""
    out: dict[str, Any] = {}
    for key, value in asdict(item).items():
        head, *rest = key.split("_")
        out[head + "".join(p.title() for p in rest)] = (
            value.isoformat() if isinstance(value, datetime) else value
        )
    return out
