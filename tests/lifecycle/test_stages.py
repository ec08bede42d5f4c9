"""Stage models: the last stage that holds, validation with paths, the presets' journeys
over time, stability on re-evaluation, and SQL (`sql_stage`) agreeing with memory
(`stage_for`) on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.env import Env
from nurture.conditions.facts import ContactFacts, EventFact, load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import StageCondition, walk
from nurture.errors import ValidationError
from nurture.lifecycle.presets import PRESETS, SCORE_PRESETS, preset
from nurture.lifecycle.stages import StageModel, parse_stage_model
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # events happen at 09:00 on their day
LEAD = SCORE_PRESETS["lead"]
BANDS = {"lead": LEAD.bands()}


def event(day: float, name: str, type_: str = "track", **properties: Any) -> EventFact:
    return EventFact(0, type_, name, to_microseconds(START + timedelta(days=day)), properties)


def contact(events: Iterable[EventFact], **traits: Any) -> ContactFacts:
    ordered = sorted(events, key=lambda e: e.at)
    for number, e in enumerate(ordered, start=1):
        e.id = number
    return ContactFacts(id=1, columns={}, traits=dict(traits), events=ordered)


def evaluator(day: float) -> Evaluator:
    """Evaluation at noon of `day`: the day's 09:00 events have happened."""
    return Evaluator(Env(now=START + timedelta(days=day, hours=3), score_bands=BANDS))


def remember(facts: ContactFacts, model: StageModel, stage: str) -> None:
    """Store a stage as the engine does: current stage, and the history of stages."""
    facts.stages[model.key] = stage
    facts.stages_ever.setdefault(model.key, set()).add(stage)


def live(
    model: StageModel,
    facts: ContactFacts,
    days: Iterable[int],
    traits_on: dict[int, dict[str, Any]] | None = None,
) -> list[tuple[int, str]]:
    """Evaluate once a day, as the scheduled evaluation does, feeding the stored stage (and
    the lead score) back; returns the (day, stage) changes."""
    changes = []
    for day in days:
        facts.traits.update((traits_on or {}).get(day, {}))
        evaluate = evaluator(day)
        result = LEAD.score(facts, evaluate)
        facts.scores["lead"] = (result.score, result.temperature)
        stage = model.stage_for(facts, evaluate)
        if facts.stages.get(model.key) != stage:
            changes.append((day, stage))
            remember(facts, model, stage)
        # Evaluating again at the same moment changes nothing.
        assert model.stage_for(facts, evaluate) == stage
    return changes


# -- the rule -------------------------------------------------------------------------
TRIAL = {
    "key": "trial",
    "name": "Trial",
    "stages": [
        {"key": "new", "name": "New"},
        {"key": "trying", "name": "Trying", "when": {"event": "Feature Used"}},
        {"key": "paying", "name": "Paying", "when": {"event": "Order Completed"}},
        {
            "key": "gone",
            "name": "Gone",
            "when": {"not": {"event": "*", "within_last": "30d"}},
        },
    ],
}


def test_a_contact_is_in_the_last_stage_whose_condition_holds() -> None:
    # Given a model where later stages win
    model = parse_stage_model(TRIAL)
    # When contacts with different histories are evaluated on day 40
    evaluate = evaluator(40)
    newcomer = contact([event(39, "Page Viewed")])
    trying = contact([event(35, "Feature Used")])
    paying = contact([event(35, "Feature Used"), event(38, "Order Completed")])
    paid_long_ago = contact([event(1, "Order Completed")])
    # Then each is in the last stage that holds; nothing holds: the first stage
    assert model.stage_for(newcomer, evaluate) == "new"
    assert model.stage_for(trying, evaluate) == "trying"
    assert model.stage_for(paying, evaluate) == "paying"
    assert model.stage_for(paid_long_ago, evaluate) == "gone"
    assert model.keys == ["new", "trying", "paying", "gone"]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda m: m.update(stages=[]), "stages", "at least 1 item"),
        (lambda m: m["stages"][2].update(key="trying"), "stages[2].key", "duplicate stage key"),
        (lambda m: m["stages"][0].update(when={"event": "A"}), "stages[0].when", "default"),
        (lambda m: m["stages"][2].pop("when"), "stages[2]", "only the first stage"),
        (
            lambda m: m["stages"][3].update(when={"event": "A", "within_last": "soon"}),
            "stages[3].when.event.within_last",
            "expected a duration",
        ),
        (
            lambda m: m["stages"][3].update(
                when={"all": [{"event": "A"}, {"stage": "churned", "ever": True}]}
            ),
            "stages[3].when",
            "stage 'churned', which this model does not have",
        ),
        (lambda m: m.update(key="Trial Model"), "key", "lowercase letters"),
        (lambda m: m["stages"][1].update(key="Trying!"), "stages[1].key", "lowercase letters"),
        (lambda m: m["stages"][1].update(colour="red"), "stages[1].colour", "unknown field"),
        (lambda m: (m.pop("stages"), m.update(preset="crm")), "preset", "unknown preset 'crm'"),
    ],
)
def test_invalid_stage_models_are_rejected_with_the_path_of_the_bad_field(
    change: Any, path: str, message: str
) -> None:
    # Given a valid model with one mistake
    data = copy.deepcopy(TRIAL)
    change(data)
    # When it is parsed
    with pytest.raises(ValidationError) as caught:
        parse_stage_model(data, path="stage_models.trial")
    # Then the error names the field and says what is wrong
    assert caught.value.path == f"stage_models.trial.{path}"
    assert message in caught.value.message
    assert caught.value.code == "invalid_stage_model"


def test_a_model_can_use_a_preset_and_reads_its_own_history() -> None:
    # Given a project model that takes the SaaS preset under its own key
    model = parse_stage_model({"key": "lifecycle", "preset": "saas"})
    # Then it has the preset's stages, and its stage conditions read `lifecycle`
    assert model.keys == preset("saas").keys
    assert model.name == "SaaS lifecycle"
    assert model.preset == "saas"
    models = {
        c.model
        for s in model.stages
        if s.when is not None
        for c in walk(s.when)
        if isinstance(c, StageCondition)
    }
    assert models == {"lifecycle"}
    assert model.references().stage_models == {"lifecycle"}
    # And a model dumped and read back is the same model
    assert parse_stage_model(model.model_dump(mode="json", by_alias=True)) == model


def test_references_name_what_the_stages_read() -> None:
    # Given the B2B preset, whose MQL stage reads the lead score
    refs = preset("leads").references()
    # Then its references list the score and the events to load
    assert refs.scores == {"lead"}
    assert ("track", "Signed Up") in refs.events
    assert refs.segments == frozenset()
    assert refs.stage_models == frozenset()


# -- the presets over time ----------------------------------------------------------------
def test_saas_journey_from_visitor_through_churn_and_back() -> None:
    # Given a SaaS user who signs up, activates, logs in every other day, then less,
    # goes silent after day 28 and comes back on day 70 for good
    logins = [*range(2, 21, 2), 28, *range(70, 90, 2)]
    facts = contact(
        [
            event(0, "Pricing", "page"),
            event(1, "Signed Up"),
            event(2, "Feature Used", feature="dashboard_created"),
            *(event(day, "Logged In") for day in logins),
        ]
    )
    # When the model is evaluated every day for 90 days
    changes = live(preset("saas"), facts, range(90))
    # Then the user moves through every stage, each on the day its rule says
    assert changes == [
        (0, "visitor"),
        (1, "signed_up"),
        (2, "activated"),
        (6, "engaged"),  # 3 logins in 14 days
        (30, "at_risk"),  # 3 logins in the last 14 days against 7 in the 14 before
        (58, "churned"),  # the last login (day 28, 09:00) is over 30 days old
        (70, "reactivated"),  # back from churn, one login
        (74, "engaged"),  # 3 logins in 14 days again
    ]


def test_saas_reactivated_user_who_drifts_away_is_at_risk_then_churned_again() -> None:
    # Given a user who logs in daily for 20 days, churns, and comes back once on day 70
    logins = [*range(1, 21), 70]
    facts = contact(
        [
            event(0, "Signed Up"),
            event(1, "Feature Used"),
            *(event(day, "Logged In") for day in logins),
        ]
    )
    # When evaluated daily
    changes = live(preset("saas"), facts, range(130))
    # Then the comeback is followed by "at risk" and "churned", not a stuck "reactivated"
    assert changes == [
        (0, "signed_up"),
        (1, "activated"),
        (3, "engaged"),
        (28, "at_risk"),  # 6 logins in the last 14 days against 14 in the 14 before
        (50, "churned"),
        (70, "reactivated"),
        (84, "at_risk"),  # no login for 14 days
        (100, "churned"),  # nor for 30
    ]


def test_saas_user_who_pauses_without_churning_is_engaged_again_not_reactivated() -> None:
    # Given a user who logs in daily, pauses for 20 days, and logs in daily again
    logins = [*range(1, 21), *range(40, 60)]
    facts = contact(
        [
            event(0, "Signed Up"),
            event(1, "Feature Used"),
            *(event(day, "Logged In") for day in logins),
        ]
    )
    # When evaluated daily
    changes = live(preset("saas"), facts, range(60))
    # Then the user is at risk during the pause and engaged after it: "reactivated"
    # needs a churn first
    assert changes == [
        (0, "signed_up"),
        (1, "activated"),
        (3, "engaged"),
        (28, "at_risk"),
        (42, "engaged"),
    ]


def test_shop_journey_from_subscriber_through_lapse_and_back() -> None:
    # Given a shopper who orders on days 10, 40 and 70, lapses, and orders again from day 300
    orders = [10, 40, 70, 300, 320, 340]
    facts = contact(
        [
            event(0, "Newsletter Subscribed"),
            *(event(day, "Order Completed", total=80.0) for day in orders),
        ]
    )
    # When the model is evaluated every day for a year
    changes = live(preset("shop"), facts, range(365))
    # Then the shopper moves through every stage, each on the day its rule says
    assert changes == [
        (0, "subscriber"),
        (10, "first_time_buyer"),
        (40, "repeat_buyer"),
        (70, "loyal"),  # 3 orders in 180 days
        (160, "at_risk"),  # no order for 90 days
        (250, "lapsed"),  # no order for 180 days
        (300, "won_back"),
        (340, "loyal"),  # 3 orders in 180 days again
    ]


def test_shop_loyal_customer_whose_orders_halve_is_at_risk() -> None:
    # Given a customer with 6 orders in one quarter and 2 in the next
    orders = [0, 15, 30, 45, 60, 75, 100, 150]
    facts = contact(event(day, "Order Completed") for day in orders)
    # When evaluated on day 170
    stage = preset("shop").stage_for(facts, evaluator(170))
    # Then the drop makes them at risk although they ordered recently
    assert stage == "at_risk"


def test_leads_journey_where_the_score_threshold_makes_an_mql() -> None:
    # Given a B2B prospect: newsletter, trial, pricing and a demo request; sales
    # qualifies them on day 9, and they buy on day 40
    facts = contact(
        [
            event(0, "Newsletter Subscribed"),
            event(3, "Signed Up"),
            event(5, "Pricing", "page"),
            event(6, "Demo Requested"),
            event(40, "Order Completed"),
        ],
        email="dana@northwind.example",
    )
    # When the score and the stage are evaluated every day
    changes = live(preset("leads"), facts, range(45), traits_on={9: {"sales_qualified": True}})
    # Then the score over 50 moves the lead to MQL, and sales and the order do the rest
    assert changes == [(0, "subscriber"), (3, "lead"), (6, "mql"), (9, "sql"), (40, "customer")]


def test_leads_mql_whose_score_fades_goes_back_to_lead() -> None:
    # Given a prospect who became an MQL on day 6 and then did nothing
    facts = contact(
        [
            event(0, "Newsletter Subscribed"),
            event(3, "Signed Up"),
            event(5, "Pricing", "page"),
            event(6, "Demo Requested"),
        ]
    )
    # When the score decays with its 30-day half-life
    changes = live(preset("leads"), facts, range(30))
    # Then the lead drops back below the threshold about 10 days later
    assert changes == [(0, "subscriber"), (3, "lead"), (6, "mql"), (16, "lead")]
    assert facts.scores["lead"][1] == "warm"


# -- populations: stability and SQL agreement ----------------------------------------------
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
US = 1_000_000
DAY_US = 86_400 * US
EVENTS = [
    ("track", "Signed Up"),
    ("track", "Feature Used"),
    ("track", "Logged In"),
    ("track", "Logged In"),
    ("track", "Logged In"),
    ("track", "Order Completed"),
    ("track", "Order Completed"),
    ("track", "Form Submitted"),
    ("track", "Demo Requested"),
    ("track", "Subscription Renewed"),
    ("page", "Pricing"),
]
# Days before now on and around the presets' windows (negative: after now).
DAYS = [0, 1, 3, 6, 10, 13, 14, 15, 20, 27, 28, 29, 30, 31, 45, 60, 89, 90, 91, 150, 180, 181, -1]
SCORES = [None, 0.0, 12.5, 49.99, 50.0, 80.0, -20.0]


def population(seed: int, size: int) -> list[dict[str, Any]]:
    """Contacts with events around the windows' edges and any stored stage history."""
    rng = random.Random(seed)
    people = []
    for _ in range(size):
        events = []
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 12])):
            type_, name = rng.choice(EVENTS)
            offset = rng.choice(DAYS) * DAY_US + rng.choice([0, 0, 3600 * US, 1, -1])
            events.append((type_, name, to_microseconds(NOW) - offset))
        stored = {}
        for model in PRESETS.values():
            current = rng.choice([None, *model.keys])
            ever = set(rng.sample(model.keys, rng.randrange(0, 3)))
            if current:
                ever.add(current)
            stored[model.key] = (current, ever)
        people.append(
            {
                "events": sorted(events, key=lambda e: e[2]),
                "sales_qualified": rng.choice([None, True, False, "true"]),
                "score": rng.choice(SCORES),
                "stored": stored,
            }
        )
    return people


def as_facts(index: int, person: dict[str, Any]) -> ContactFacts:
    events = [
        EventFact(number, type_, name, at, {})
        for number, (type_, name, at) in enumerate(person["events"], start=1)
    ]
    traits = (
        {} if person["sales_qualified"] is None else {"sales_qualified": person["sales_qualified"]}
    )
    facts = ContactFacts(id=index, columns={}, traits=traits, events=events)
    for model, (current, ever) in person["stored"].items():
        if current:
            facts.stages[model] = current
        facts.stages_ever[model] = set(ever)
    if person["score"] is not None:
        facts.scores["lead"] = (person["score"], LEAD.temperature_of(person["score"]))
    return facts


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_a_contact_where_it_is_when_evaluated_again(name: str) -> None:
    # Given a varied population with any stored stage and stage history
    model = preset(name)
    for days_later in (0, 7, 40):
        evaluate = Evaluator(Env(now=NOW + timedelta(days=days_later), score_bands=BANDS))
        for index, person in enumerate(population(seed=days_later, size=400)):
            facts = as_facts(index, person)
            # When a contact's stage is evaluated and stored
            first = model.stage_for(facts, evaluate)
            remember(facts, model, first)
            # Then evaluating again at the same moment keeps it there
            assert model.stage_for(facts, evaluate) == first, (name, person)


def store(db: Database, people: list[dict[str, Any]]) -> None:
    rows: dict[Any, list[dict[str, Any]]] = {
        t.contacts: [],
        t.events: [],
        t.contact_stages: [],
        t.stage_changes: [],
        t.contact_scores: [],
    }
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for index, person in enumerate(people, start=1):
        traits = {}
        if person["sales_qualified"] is not None:
            traits["sales_qualified"] = person["sales_qualified"]
        rows[t.contacts].append(
            {
                "id": index,
                "traits": traits,
                "trait_issues": {},
                "first_seen_at": NOW,
                "last_seen_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            }
        )
        for type_, name, at in person["events"]:
            number = len(rows[t.events]) + 1
            rows[t.events].append(
                {
                    "id": number,
                    "message_id": f"m{number}",
                    "type": type_,
                    "event": name,
                    "contact_id": index,
                    "timestamp": epoch + timedelta(microseconds=at),
                    "received_at": NOW,
                    "properties": {},
                }
            )
        for model, (current, ever) in person["stored"].items():
            if current:
                rows[t.contact_stages].append(
                    {"model": model, "contact_id": index, "stage": current, "since": NOW}
                )
            rows[t.stage_changes] += [
                {"model": model, "contact_id": index, "to_stage": stage, "changed_at": NOW}
                for stage in sorted(ever)
            ]
        if person["score"] is not None:
            rows[t.contact_scores].append(
                {
                    "model": "lead",
                    "contact_id": index,
                    "score": person["score"],
                    "temperature": LEAD.temperature_of(person["score"]),
                    "updated_at": NOW,
                }
            )
    with db.write() as conn:
        for table, values in rows.items():
            conn.execute(delete(table))
            if values:
                conn.execute(insert(table), values)


@pytest.mark.parametrize("seed", [1, 2])
def test_sql_stage_agrees_with_stage_for_on_every_preset(db: Database, seed: int) -> None:
    # Given a varied population stored in the database
    people = population(seed, size=150)
    store(db, people)
    ids = list(range(1, len(people) + 1))
    for days_later in (0, 10, 100):
        env = Env(now=NOW + timedelta(days=days_later), score_bands=BANDS)
        compiler, evaluate = SqlCompiler(env, db.backend), Evaluator(env)
        for model in PRESETS.values():
            # When the stage is computed by SQL for everyone, and in memory one by one
            with db.read() as conn:
                query = select(t.contacts.c.id, model.sql_stage(compiler))
                in_sql = {cid: stage for cid, stage in conn.execute(query)}
                facts = load_facts(conn, ids, now=env.now)
            in_memory = {cid: model.stage_for(f, evaluate) for cid, f in facts.items()}
            # Then both give every contact the same stage
            assert in_sql == in_memory, model.key
            if days_later == 0:
                # (and the population reaches most stages, so the check means something)
                assert len(set(in_sql.values())) >= len(model.keys) - 1, model.key


def test_sql_stage_of_a_model_with_one_stage_is_that_stage(db: Database) -> None:
    # Given a model with only its default stage
    model = parse_stage_model({"key": "all", "stages": [{"key": "everyone"}]})
    store(db, population(3, size=3))
    # When it is computed in SQL
    with db.read() as conn:
        stages = conn.execute(
            select(model.sql_stage(SqlCompiler(Env(now=NOW), db.backend))).select_from(t.contacts)
        ).scalars()
        # Then every contact is in it
        assert set(stages) == {"everyone"}
