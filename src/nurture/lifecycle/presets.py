"""Ready-made stage models (`saas`, `shop`, `leads`) and score model (`lead`).

Each is written as the YAML a user would write, parsed when this module is imported, so
that the docs show them verbatim and a user can copy one and change what differs: the
activation event, the windows, the thresholds. A project can also use a preset as it is
(`{key: lifecycle, preset: saas}`): its `stage:` conditions name no model, so they read
the history of whichever model uses them.

Event names are those of Segment's specs and the benchmark world (bench/generate.py):
`Signed Up`, `Logged In`, `Feature Used`, `Order Completed`, `Subscription Renewed`, page
views named after the page (`Pricing`).

Why these stages do not flip back and forth: every condition but two reads only events,
traits and stored scores, which re-evaluating a stage does not change. The two that read
the model's own stored stage ("reactivated", "won back") hold when the contact is in the
stage they lead out of (churned, lapsed) or already in themselves, and they need a recent
login or order, which rules out churned and lapsed. So a contact that has just moved stays
where it is when evaluated again, and leaves "reactivated" only for a stage listed after
it (engaged, at risk, churned); tests/lifecycle/test_stages.py checks this over a varied
population.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from nurture.errors import ValidationError
from nurture.lifecycle.scoring import ScoreModel, parse_score_model
from nurture.lifecycle.stages import StageModel, parse_stage_model

SAAS_YAML = """\
key: saas
name: SaaS lifecycle
description: From first visit to engaged user, and back from churn.
# A contact is in the LAST stage whose `when` holds: later stages win.
stages:
  - key: visitor
    name: Visitor
    description: Everyone starts here, anonymous visitors included.

  - key: signed_up
    name: Signed up
    when:
      event: Signed Up

  - key: activated
    name: Activated
    description: Reached first value.
    # The activation event. Make it yours, e.g. one feature:
    #   {event: Feature Used, where: [{property: feature, eq: dashboard_created}]}
    when:
      event: Feature Used

  - key: reactivated
    name: Reactivated
    description: Came back after churning, and not (yet) engaged again.
    # Entered from "churned" only; listed before "engaged" so that regular use makes
    # the contact engaged again, and a drop makes it at risk.
    when:
      all:
        - any:
            - stage: churned
            - stage: reactivated
        - event: Logged In
          within_last: 14d

  - key: engaged
    name: Engaged
    when:
      event: Logged In
      at_least: 3
      within_last: 14d

  - key: at_risk
    name: At risk
    description: Logins dropped by half, or stopped for two weeks.
    when:
      any:
        # Logins in the last 14 days under half of the 14 days before.
        - trend: count
          event: Logged In
          period: 14d
          below: 0.5
        # Or no login for 14 days (until churned).
        - all:
            - event: Logged In
            - not:
                event: Logged In
                within_last: 14d

  - key: churned
    name: Churned
    description: Logged in before, but not in the last 30 days.
    when:
      all:
        - event: Logged In
        - not:
            event: Logged In
            within_last: 30d
"""

SHOP_YAML = """\
key: shop
name: Shop lifecycle
description: From subscriber to loyal customer, and back from a lapse.
# A contact is in the LAST stage whose `when` holds: later stages win.
stages:
  - key: subscriber
    name: Subscriber
    description: Everyone starts here.

  - key: first_time_buyer
    name: First-time buyer
    when:
      event: Order Completed

  - key: repeat_buyer
    name: Repeat buyer
    when:
      event: Order Completed
      at_least: 2

  - key: won_back
    name: Won back
    description: Ordered again after lapsing, and not (yet) loyal again.
    # Entered from "lapsed" only; listed before "loyal" and "at risk" so that both
    # take over when they apply.
    when:
      all:
        - any:
            - stage: lapsed
            - stage: won_back
        - event: Order Completed
          within_last: 90d

  - key: loyal
    name: Loyal
    when:
      event: Order Completed
      at_least: 3
      within_last: 180d

  - key: at_risk
    name: At risk
    description: Orders dropped by half, or none for 90 days.
    when:
      any:
        # Orders in the last 90 days under half of the 90 days before.
        - trend: count
          event: Order Completed
          period: 90d
          below: 0.5
        # Or no order for 90 days (until lapsed).
        - all:
            - event: Order Completed
            - not:
                event: Order Completed
                within_last: 90d

  - key: lapsed
    name: Lapsed
    description: Ordered before, but not in the last 180 days.
    when:
      all:
        - event: Order Completed
        - not:
            event: Order Completed
            within_last: 180d
"""

LEADS_YAML = """\
key: leads
name: B2B lead funnel
description: From subscriber to customer; the lead score decides who is marketing-qualified.
# A contact is in the LAST stage whose `when` holds: later stages win.
stages:
  - key: subscriber
    name: Subscriber
    description: Everyone starts here.

  - key: lead
    name: Lead
    description: Told us who they are.
    when:
      any:
        - event: Signed Up
        - event: Form Submitted
        - event: Demo Requested

  - key: mql
    name: Marketing-qualified lead
    # A score threshold moves a lead here: 50 is where the `lead` score turns hot.
    # A lead whose score decays below it goes back to "lead".
    when:
      score: lead
      gte: 50

  - key: sql
    name: Sales-qualified lead
    # Sales accepted the lead: a trait your CRM sync sets.
    when:
      trait: sales_qualified
      eq: true

  - key: customer
    name: Customer
    when:
      any:
        - event: Order Completed
        - event: Subscription Started
        - event: Subscription Renewed
"""

LEAD_SCORE_YAML = """\
key: lead
name: Lead score
description: Buying intent, fading with time.
# Every event's points halve each 30 days.
half_life: 30d
temperatures:
  - name: cold
  - name: warm
    at_least: 20
  - name: hot
    at_least: 50
rules:
  - name: Order
    event: Order Completed
    points: 100

  - name: Trial sign-up
    event: Signed Up
    points: 20
    max_times: 1

  - name: Demo request
    event: Demo Requested
    points: 30
    max_times: 1

  - name: Newsletter sign-up
    event: Newsletter Subscribed
    points: 10
    max_times: 1

  - name: Pricing page visit
    event: Pricing
    type: page
    points: 5
    max_times: 4

  - name: Competitor email domain
    when:
      any:
        - trait: email
          ends_with: "@competitor.com"
        - trait: email
          ends_with: "@rival.io"
    points: -20
"""

_STAGE_YAML = {"saas": SAAS_YAML, "shop": SHOP_YAML, "leads": LEADS_YAML}
_STAGE_DATA: dict[str, dict[str, Any]] = {
    name: yaml.safe_load(text) for name, text in _STAGE_YAML.items()
}
PRESETS: Mapping[str, StageModel] = MappingProxyType(
    {name: parse_stage_model(data, path=f"presets.{name}") for name, data in _STAGE_DATA.items()}
)
SCORE_PRESETS: Mapping[str, ScoreModel] = MappingProxyType(
    {"lead": parse_score_model(yaml.safe_load(LEAD_SCORE_YAML), path="presets.lead")}
)


def _known(name: str, known: Mapping[str, Any], what: str, code: str) -> None:
    if name not in known:
        raise ValidationError(
            f"unknown {what} {name!r} (known: {', '.join(sorted(known))})",
            path="preset",
            code=code,
        )


def preset_data(name: str) -> dict[str, Any]:
    """A preset stage model as plain data (a copy: change it freely)."""
    _known(name, _STAGE_DATA, "preset", "invalid_stage_model")
    return copy.deepcopy(_STAGE_DATA[name])


def preset(name: str) -> StageModel:
    """A ready-made stage model: `saas`, `shop` or `leads`."""
    _known(name, PRESETS, "preset", "invalid_stage_model")
    return PRESETS[name]


def score_preset(name: str) -> ScoreModel:
    """A ready-made score model: `lead`."""
    _known(name, SCORE_PRESETS, "score preset", "invalid_score_model")
    return SCORE_PRESETS[name]
