# ruff: noqa: RUF001, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""The `clv` setting: which events are purchases and how lifetime value is measured.

Kept apart from the models (`analytics/clv.py`) so that reading the settings does not
load SciPy.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nurture.conditions.durations import Duration
from nurture.conditions.sqlvalues import check_path
from nurture.errors import ValidationError

UNIT_DAYS = {"days": 1.0, "weeks": 7.0}


class ClvConfig(BaseModel):
    """The `clv` setting (docs/analytics/clv.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purchase_event: str = Field(
        "Order Completed",
        min_length=1,
        description="The track event that is a purchase; purchases on the same UTC day are one",
    )
    revenue: str = Field(
        "revenue",
        min_length=1,
        description="The event property holding the purchase's value (a dotted path; only "
        "JSON numbers count)",
    )
    unit: Literal["days", "weeks"] = Field(
        "weeks", description="The time unit of t_x, T and the fitted α (predictions do not change)"
    )
    horizon: Duration = Field(
        timedelta(days=365),
        description="How far ahead expected purchases and expected value look",
    )
    calibration_end: date | None = Field(
        None,
        description="Last day (UTC) of purchases the models see; none: today, up to now",
    )
    discount_rate: float = Field(
        0.0,
        ge=0.0,
        lt=10.0,
        description="Annual rate discounting future purchases in the expected value (0: none)",
    )

    @field_validator("revenue")
    @classmethod
    def _check_revenue(cls, value: str) -> str:
        try:
            check_path(value)
        except ValidationError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("horizon")
    @classmethod
    def _check_horizon(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 86400:
            raise ValueError("expected a horizon of at least one day (1d)")
        return value

    @property
    def unit_days(self) -> float:
        """Days per time unit: 1 or 7."""
        return UNIT_DAYS[self.unit]

    @property
    def horizon_units(self) -> float:
        """The horizon in the time unit."""
        return self.horizon.total_seconds() / 86400.0 / self.unit_days
