"""What an evaluation needs besides the condition and the contact: the moment it is
evaluated at, and the definitions conditions may refer to by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from nurture.errors import ValidationError
from nurture.store.types import to_microseconds

if TYPE_CHECKING:
    from nurture.conditions.computed import ComputedTrait


@dataclass(frozen=True)
class Env:
    """`now` is the moment "as of" which everything is evaluated: events after it do not
    exist yet, windows end at it. Both evaluators take the same Env."""

    now: datetime
    # Score model → its temperature bands, lowest first: (name, lowest score of the band).
    score_bands: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    # Stage model used by `stage:` conditions that name no model.
    default_stage_model: str | None = None
    computed: Mapping[str, ComputedTrait] = field(default_factory=dict)
    # Population values computed traits use (RFM quintile bounds), by trait key.
    computed_state: Mapping[str, object] = field(default_factory=dict)

    @property
    def now_us(self) -> int:
        return to_microseconds(self.now)

    def stage_model(self, named: str | None) -> str:
        model = named or self.default_stage_model
        if model is None:
            raise ValidationError(
                "no stage model is defined: name one with `model:`", code="unknown_reference"
            )
        return model

    def temperature_of(self, model: str, score: float) -> str:
        """The temperature band `score` falls in."""
        bands = self.score_bands.get(model)
        if not bands:
            return ""
        name = bands[0][0]
        for band, lowest in bands:
            if score >= lowest:
                name = band
        return name

    def computed_trait(self, key: str) -> ComputedTrait:
        try:
            return self.computed[key]
        except KeyError:
            known = ", ".join(sorted(self.computed)) or "none is declared"
            raise ValidationError(
                f"unknown computed trait {key!r} (known: {known})", code="unknown_reference"
            ) from None
