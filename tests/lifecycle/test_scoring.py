"""Score models: points per event with decay and caps, points while a condition holds,
the explanation, temperature bands and their edges, validation with paths, and scores of
contacts loaded from SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from nurture.conditions.env import Env
from nurture.conditions.facts import ContactFacts, EventFact, load_facts
from nurture.conditions.memory import Evaluator
from nurture.errors import ValidationError
from nurture.lifecycle.presets import score_preset
from nurture.lifecycle.scoring import RuleContribution, ScoreModel, parse_score_model
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
EVALUATE = Evaluator(Env(now=NOW))


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def event(days_ago: float, name: str, type_: str = "track", **properties: Any) -> EventFact:
    return EventFact(0, type_, name, to_microseconds(ago(days_ago)), properties)


def contact(events: Iterable[EventFact], email: str | None = None) -> ContactFacts:
    ordered = sorted(events, key=lambda e: e.at)
    for number, e in enumerate(ordered, start=1):
        e.id = number
    return ContactFacts(id=1, columns={"email": email}, traits={}, events=ordered)


def model(*rules: dict[str, Any], half_life: str | None = None) -> ScoreModel:
    data: dict[str, Any] = {
        "key": "intent",
        "name": "Intent",
        "temperatures": [
            {"name": "cold"},
            {"name": "warm", "at_least": 20},
            {"name": "hot", "at_least": 50},
        ],
        "rules": list(rules),
    }
    if half_life:
        data["half_life"] = half_life
    return parse_score_model(data)


ORDER = {"event": "Order Completed", "points": 100}
PRICING = {"name": "Pricing page", "event": "Pricing", "type": "page", "points": 5}


# -- points -------------------------------------------------------------------------------
def test_an_events_points_halve_after_each_half_life() -> None:
    # Given a model whose points halve every 30 days
    scores = model(ORDER, half_life="30d")
    # When orders of different ages are scored
    fresh = scores.score(contact([event(0, "Order Completed")]), EVALUATE)
    one_half_life = scores.score(contact([event(30, "Order Completed")]), EVALUATE)
    one_and_a_half = scores.score(contact([event(45, "Order Completed")]), EVALUATE)
    # Then each order is worth 100 x 0.5^(age / 30d)
    assert fresh.score == 100.0
    assert one_half_life.score == 50.0
    assert one_and_a_half.score == round(100 * 0.5**1.5, 2) == 35.36
    assert one_and_a_half.temperature == "warm"


def test_without_a_half_life_points_do_not_fade() -> None:
    # Given a model without decay and two orders, one a year old
    scores = model(ORDER)
    facts = contact([event(365, "Order Completed"), event(1, "Order Completed")])
    # When scored
    result = scores.score(facts, EVALUATE)
    # Then both count in full
    assert result.score == 200.0
    assert result.explanation == (RuleContribution("Order Completed", 200.0, 2, ago(1)),)


def test_max_times_counts_only_the_most_recent_events() -> None:
    # Given pricing-page visits 1 to 6 days ago, of which 4 count
    capped = {**PRICING, "max_times": 4}
    facts = contact(event(days, "Pricing", "page") for days in (6, 5, 4, 3, 2, 1))
    # When scored without decay, and with a 30-day half-life
    flat = model(capped).score(facts, EVALUATE)
    fading = model(capped, half_life="30d").score(facts, EVALUATE)
    # Then 4 visits count, and with decay they are the 4 most recent
    assert flat.score == 20.0
    assert flat.explanation == (RuleContribution("Pricing page", 20.0, 4, ago(1)),)
    expected = round(math.fsum(5 * 0.5 ** (d / 30) for d in (1, 2, 3, 4)), 2)
    assert fading.score == expected == 18.88


def test_within_last_leaves_older_events_out() -> None:
    # Given pricing visits 10, 40 and 80 days ago, counted over the last 45 days
    scores = model({**PRICING, "within_last": "45d"})
    facts = contact(event(days, "Pricing", "page") for days in (80, 40, 10))
    # When scored
    result = scores.score(facts, EVALUATE)
    # Then the visit 80 days ago gives nothing
    assert result.explanation == (RuleContribution("Pricing page", 10.0, 2, ago(10)),)


def test_events_after_now_and_other_events_do_not_count() -> None:
    # Given an order tomorrow, a track event named Pricing, and a filtered rule
    scores = model(
        ORDER,
        PRICING,
        {
            "name": "Big order",
            "event": "Order Completed",
            "where": [{"property": "total", "gte": 500}],
            "points": 50,
        },
    )
    facts = contact(
        [
            event(-1, "Order Completed", total=900),
            event(2, "Pricing"),  # a track event, not a page view
            event(3, "Order Completed", total=120),
        ]
    )
    # When scored
    result = scores.score(facts, EVALUATE)
    # Then only the past, small order counts
    assert result.score == 100.0
    assert [part.rule for part in result.explanation] == ["Order Completed"]


def test_a_negative_condition_rule_subtracts_points_while_it_holds() -> None:
    # Given a rule against competitors' email domains
    competitor = {
        "name": "Competitor",
        "when": {
            "any": [
                {"trait": "email", "ends_with": "@competitor.com"},
                {"trait": "email", "ends_with": "@rival.io"},
            ]
        },
        "points": -20,
    }
    scores = model(PRICING, competitor, half_life="7d")
    visit = [event(7, "Pricing", "page")]
    # When a competitor and a prospect with the same visit are scored
    rival = scores.score(contact(visit, email="spy@rival.io"), EVALUATE)
    prospect = scores.score(contact(visit, email="ana@acme.example"), EVALUATE)
    # Then the competitor loses 20 points, undecayed, and is below zero
    assert rival.score == -17.5
    assert rival.temperature == "cold"
    assert rival.explanation[1] == RuleContribution("Competitor", -20.0, 1, None)
    assert prospect.score == 2.5
    assert [part.rule for part in prospect.explanation] == ["Pricing page"]


def test_a_contact_with_nothing_to_score_is_at_zero_in_the_lowest_band() -> None:
    result = model(ORDER).score(contact([]), EVALUATE)
    assert (result.score, result.temperature, result.explanation) == (0.0, "cold", ())


# -- the explanation and the ready-made model -------------------------------------------
def test_the_lead_score_explains_which_rules_gave_how_many_points_when() -> None:
    # Given a prospect who subscribed, signed up, read pricing 5 times and requested a demo
    facts = contact(
        [
            event(20, "Newsletter Subscribed"),
            event(10, "Signed Up", plan="team"),
            *(event(days, "Pricing", "page") for days in (9, 8, 6, 4, 2)),
            event(1, "Demo Requested"),
        ],
        email="lee@northwind.example",
    )
    # When the ready-made lead score is computed
    result = score_preset("lead").score(facts, EVALUATE)

    # Then each rule that gave points says how many, for how many events, and the latest
    def decayed(points: float, *days: float) -> float:
        return round(math.fsum(points * 0.5 ** (d / 30) for d in days), 2)

    assert result.explanation == (
        RuleContribution("Trial sign-up", decayed(20, 10), 1, ago(10)),
        RuleContribution("Demo request", decayed(30, 1), 1, ago(1)),
        RuleContribution("Newsletter sign-up", decayed(10, 20), 1, ago(20)),
        RuleContribution("Pricing page visit", decayed(5, 8, 6, 4, 2), 4, ago(2)),
    )
    # And the parts add up to the score, which is hot
    assert result.score == round(sum(part.points for part in result.explanation), 2) == 69.32
    assert result.temperature == "hot"
    assert result.to_dict()["explanation"][1] == {
        "rule": "Demo request",
        "points": 29.31,
        "count": 1,
        "lastAt": "2026-03-31T12:00:00+00:00",
    }


def test_references_list_the_events_and_state_the_rules_read() -> None:
    refs = model(ORDER, PRICING, {"name": "VIP", "when": {"segment": "vip"}, "points": 5})
    assert refs.references().events == {
        ("track", "Order Completed"),
        ("page", "Pricing"),
        ("system", "score.points"),  # points added by journeys
    }
    assert refs.references().segments == {"vip"}


# -- temperatures ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("points", "temperature"),
    [(-5, "cold"), (19.99, "cold"), (20, "warm"), (49.99, "warm"), (50, "hot"), (500, "hot")],
)
def test_a_score_exactly_at_a_threshold_is_in_that_band(points: float, temperature: str) -> None:
    # Given a score of exactly `points`
    scores = model({"event": "Signed Up", "points": points})
    result = scores.score(contact([event(1, "Signed Up")]), EVALUATE)
    # Then its band starts at or below it, and the condition language agrees
    assert result.score == points
    assert result.temperature == temperature
    env = Env(now=NOW, score_bands={"intent": scores.bands()})
    assert env.temperature_of("intent", result.score) == temperature


def test_decay_rounds_before_the_band_is_chosen() -> None:
    # Given 50.004 points, which round to 50.0
    scores = model({"event": "Signed Up", "points": 50.004})
    result = scores.score(contact([event(1, "Signed Up")]), EVALUATE)
    # Then the stored score and its temperature agree: 50.0 is hot
    assert (result.score, result.temperature) == (50.0, "hot")


def test_bands_feed_the_environment_lowest_first() -> None:
    assert score_preset("lead").bands() == [("cold", -math.inf), ("warm", 20.0), ("hot", 50.0)]


def test_a_model_without_temperatures_has_an_empty_temperature() -> None:
    scores = parse_score_model({"key": "fit", "rules": [ORDER]})
    assert scores.score(contact([event(1, "Order Completed")]), EVALUATE).temperature == ""


# -- validation -------------------------------------------------------------------------------
VALID = {
    "key": "lead",
    "half_life": "30d",
    "temperatures": [{"name": "cold"}, {"name": "warm", "at_least": 20}],
    "rules": [ORDER, PRICING, {"name": "VIP", "when": {"segment": "vip"}, "points": 5}],
}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda m: m.update(half_life="a while"), "half_life", "expected a duration"),
        (lambda m: m.update(rules=[]), "rules", "at least 1 item"),
        (lambda m: m["rules"][1].update(points="5"), "rules[1].points", "number"),
        (lambda m: m["rules"][1].update(max_times=0), "rules[1].max_times", "greater than"),
        (lambda m: m["rules"][1].update(colour="red"), "rules[1].colour", "unknown field"),
        (lambda m: m["rules"].append({"points": 3}), "rules[3]", "expected a rule"),
        (
            lambda m: m["rules"][2].update(when={"event": "A", "within_last": "x"}),
            "rules[2].when.event.within_last",
            "expected a duration",
        ),
        (
            lambda m: m["rules"][2].update(when={"all": [{"score": "lead", "gte": 5}]}),
            "rules[2].when",
            "cannot depend on the score it is part of",
        ),
        (lambda m: m["rules"][2].pop("name"), "rules[2].name", "Field required"),
        (lambda m: m["rules"].append(dict(ORDER)), "rules[3].name", "also called"),
        (
            lambda m: m["temperatures"][0].update(at_least=0),
            "temperatures[0].at_least",
            "no lower bound",
        ),
        (lambda m: m["temperatures"].append({"name": "hot"}), "temperatures[2]", "at_least"),
        (
            lambda m: m["temperatures"].append({"name": "hot", "at_least": 20}),
            "temperatures[2].at_least",
            "above the band before it",
        ),
        (
            lambda m: m["temperatures"].append({"name": "warm", "at_least": 60}),
            "temperatures[2].name",
            "duplicate temperature",
        ),
    ],
)
def test_invalid_score_models_are_rejected_with_the_path_of_the_bad_field(
    change: Any, path: str, message: str
) -> None:
    # Given a valid model with one mistake
    data = copy.deepcopy(VALID)
    change(data)
    # When it is parsed
    with pytest.raises(ValidationError) as caught:
        parse_score_model(data, path="score_models.lead")
    # Then the error names the field and says what is wrong
    assert caught.value.path == f"score_models.lead.{path}"
    assert message in caught.value.message
    assert caught.value.code == "invalid_score_model"


def test_a_valid_model_reads_back_from_its_dump() -> None:
    scores = parse_score_model(VALID)
    assert parse_score_model(scores.model_dump(mode="json", by_alias=True)) == scores


# -- through the database -----------------------------------------------------------------------
def test_scores_of_contacts_loaded_from_the_database(db: Database) -> None:
    # Given a prospect and a competitor stored with their events
    with db.write() as conn:
        for cid, email in ((1, "ana@acme.example"), (2, "spy@competitor.com")):
            conn.execute(
                insert(t.contacts).values(
                    id=cid,
                    email=email,
                    traits={},
                    trait_issues={},
                    first_seen_at=ago(60),
                    last_seen_at=NOW,
                    created_at=ago(60),
                    updated_at=NOW,
                )
            )
        stored = [
            (1, "track", "Order Completed", 30, {"total": 120.0}),
            (1, "page", "Pricing", 31, {"path": "/pricing"}),
            (1, "page", "Pricing", 0, {"path": "/pricing"}),
            (1, "track", "Order Completed", -1, {"total": 10.0}),  # tomorrow
            (2, "track", "Newsletter Subscribed", 30, {}),
        ]
        for number, (cid, type_, name, days, props) in enumerate(stored, start=1):
            conn.execute(
                insert(t.events).values(
                    id=number,
                    message_id=f"m{number}",
                    type=type_,
                    event=name,
                    contact_id=cid,
                    timestamp=ago(days),
                    received_at=NOW,
                    properties=props,
                )
            )
    # When their lead scores are computed from the loaded facts
    lead = score_preset("lead")
    with db.read() as conn:
        facts = load_facts(conn, [1, 2], event_names=lead.references().events, now=NOW)
    results = {cid: lead.score(f, EVALUATE) for cid, f in facts.items()}
    # Then the order counts half (one half-life ago), and the competitor is below zero
    assert results[1].score == round(50 + 5 * 0.5 ** (31 / 30) + 5, 2) == 57.44
    assert results[1].temperature == "hot"
    assert results[1].explanation[0] == RuleContribution("Order", 50.0, 1, ago(30))
    assert results[2].score == -15.0
    assert [p.rule for p in results[2].explanation] == [
        "Newsletter sign-up",
        "Competitor email domain",
    ]
