"""Lifecycle stages and lead scoring: the models and how a contact is evaluated against
them. Storing stages and scores, and emitting `stage.changed` when they change, is the
evaluation engine's work."""

from nurture.conditions.references import References
from nurture.lifecycle.presets import PRESETS, SCORE_PRESETS, preset, score_preset
from nurture.lifecycle.scoring import (
    ConditionRule,
    EventRule,
    RuleContribution,
    ScoreModel,
    ScoreResult,
    Temperature,
    parse_score_model,
)
from nurture.lifecycle.stages import Stage, StageModel, parse_stage_model

__all__ = [
    "PRESETS",
    "SCORE_PRESETS",
    "ConditionRule",
    "EventRule",
    "References",
    "RuleContribution",
    "ScoreModel",
    "ScoreResult",
    "Stage",
    "StageModel",
    "Temperature",
    "parse_score_model",
    "parse_stage_model",
    "preset",
    "score_preset",
]
