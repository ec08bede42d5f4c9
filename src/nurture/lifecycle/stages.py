"""Lifecycle stage models: an ordered list of stages, each a condition.

A contact is in the LAST stage, in list order, whose `when` holds; the first stage has no
`when` and is everyone's default. The list order is therefore precedence: put "churned"
after "engaged" so that it wins when both hold.

    key: saas
    name: SaaS lifecycle
    stages:
      - key: visitor
        name: Visitor
      - key: signed_up
        name: Signed up
        when: {event: Signed Up}
      - key: churned
        name: Churned
        when:
          all:
            - event: Logged In
            - not: {event: Logged In, within_last: 30d}

A `stage:` condition inside a model that names no `model:` refers to the model itself
(`{stage: churned, ever: true}`: was ever churned in this model), so that a model copied
under another key, or taken from a preset (`preset: saas`), still reads its own history.

Both evaluators give the stage: `stage_for` for one contact in memory, `sql_stage` as a
`CASE` over `contacts` for a whole population; they agree because each stage's condition
does (tests/lifecycle/test_stages.py holds them equal).
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from sqlalchemy import ColumnElement, String, case, literal

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.facts import ContactFacts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import (
    AllCondition,
    AnyCondition,
    Condition,
    NotCondition,
    StageCondition,
    validation_error,
    walk,
)
from nurture.conditions.references import References, condition_references
from nurture.errors import ValidationError
from nurture.segments.definitions import check_key


def bind_stage_model(condition: Condition, model: str) -> Condition:
    """The condition with every `stage:` test that names no model pointed at `model`."""
    match condition:
        case StageCondition() if condition.model is None:
            return condition.model_copy(update={"model": model})
        case AllCondition():
            return condition.model_copy(
                update={"all": [bind_stage_model(c, model) for c in condition.all]}
            )
        case AnyCondition():
            return condition.model_copy(
                update={"any": [bind_stage_model(c, model) for c in condition.any]}
            )
        case NotCondition():
            return condition.model_copy(update={"not_": bind_stage_model(condition.not_, model)})
        case _:
            return condition


class Stage(BaseModel):
    """One stage: a key, a name for people, and the condition that puts a contact in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str = ""
    description: str = ""
    when: Condition | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_key(value)


class StageModel(BaseModel):
    """An ordered, configurable stage model; a contact is in the last stage that holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str = ""
    description: str = ""
    # The ready-made model this one starts from (presets.py); its stages are used when
    # `stages` is left out.
    preset: str | None = None
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None or "stages" in data:
            return data
        # presets.py parses its models with this module: import it only when needed.
        from nurture.lifecycle.presets import preset_data

        base = preset_data(data["preset"])
        return {
            "name": base.get("name", ""),
            "description": base.get("description", ""),
            **data,
            "stages": base["stages"],
        }

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_key(value)

    @field_validator("stages")
    @classmethod
    def _bind_own_stages(cls, stages: list[Stage], info: ValidationInfo) -> list[Stage]:
        key = info.data.get("key")
        if key is None:  # the key failed validation: that error is reported instead
            return stages
        return [
            s if s.when is None else s.model_copy(update={"when": bind_stage_model(s.when, key)})
            for s in stages
        ]

    @model_validator(mode="after")
    def _check(self) -> StageModel:
        # Raised as our ValidationError (not ValueError) so that the path names the stage.
        seen: dict[str, int] = {}
        for index, stage in enumerate(self.stages):
            if stage.key in seen:
                raise ValidationError(
                    f"duplicate stage key {stage.key!r} (also stages[{seen[stage.key]}])",
                    path=f"stages[{index}].key",
                    code="invalid_stage_model",
                )
            seen[stage.key] = index
        if self.stages[0].when is not None:
            raise ValidationError(
                "the first stage is everyone's default: leave out its `when`",
                path="stages[0].when",
                code="invalid_stage_model",
            )
        for index, stage in enumerate(self.stages[1:], start=1):
            if stage.when is None:
                raise ValidationError(
                    "only the first stage may leave out `when`: a stage without a "
                    "condition always holds and would hide every stage before it",
                    path=f"stages[{index}]",
                    code="invalid_stage_model",
                )
            for condition in walk(stage.when):
                if (
                    isinstance(condition, StageCondition)
                    and condition.model == self.key
                    and condition.stage not in seen
                ):
                    raise ValidationError(
                        f"refers to stage {condition.stage!r}, which this model does not "
                        f"have (its stages: {', '.join(seen)})",
                        path=f"stages[{index}].when",
                        code="invalid_stage_model",
                    )
        return self

    @property
    def keys(self) -> list[str]:
        """The stage keys, in order."""
        return [stage.key for stage in self.stages]

    def stage_for(self, facts: ContactFacts, evaluate: Evaluator) -> str:
        """The contact's stage as of `evaluate.env.now`: the last stage whose `when` holds."""
        for stage in reversed(self.stages):
            if stage.when is None or evaluate(stage.when, facts):
                return stage.key
        raise AssertionError("validated stage models start with a stage without `when`")

    def sql_stage(self, compiler: SqlCompiler) -> ColumnElement[str]:
        """The stage of each row of `contacts`, as `CASE WHEN <last> THEN ... ELSE <first>`."""
        default = literal(self.stages[0].key, String)
        whens = [
            (compiler.compile(stage.when), literal(stage.key, String))
            for stage in reversed(self.stages)
            if stage.when is not None
        ]
        if not whens:
            return default
        return case(*whens, else_=default)

    def references(self) -> References:
        """The events, segments, scores, stage models (this one too, when a stage reads
        the model's own history) and computed traits the stages' conditions use."""
        return condition_references(s.when for s in self.stages if s.when is not None)


def parse_stage_model(data: Any, *, path: str = "") -> StageModel:
    """Validate a stage model; errors name the bad field (`stages[3].when.event...`)."""
    if not isinstance(data, dict):
        raise ValidationError(
            "expected a mapping with key, name and stages",
            path=path or None,
            code="invalid_stage_model",
        )
    try:
        return StageModel.model_validate(data)
    except pydantic.ValidationError as exc:
        error = validation_error(exc, path)
        raise ValidationError(error.message, path=error.path, code="invalid_stage_model") from None
    except ValidationError as exc:
        full = join_path(path, exc.path)
        raise ValidationError(exc.message, path=full, code=exc.code) from None


def join_path(prefix: str, path: str | None) -> str | None:
    """`stage_models.saas` + `stages[3].key` → `stage_models.saas.stages[3].key`."""
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"
