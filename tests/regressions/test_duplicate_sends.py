"""Peer bug: Mautic users get the same email twice (or ten times): campaign events fired
again for contacts who re-qualify, re-entry settings ignored, A/B variants that slip past
"send this marketing email once" and past frequency rules because each variant is its own
email, and cron jobs that overlap and send the same batch twice.

Here, end to end (ingest → journey → outbox → dispatcher → channel): a contact who
qualifies twice, a journey re-published while people are in it, a split whose transaction
dies half-way and is retried, and two workers racing for the same due rows each produce
exactly one message per step, delivered once; and a variant is a send like any other for
the frequency cap and for re-entry `never`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from tests.conftest import make_settings
from tests.regressions.harness import OPT_OUT, Scene, scene, template

from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
TEMPLATES = ("welcome", "tip", "tip_v2", "extra", "promo_a", "promo_b", "newsletter")


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def world(db: Database, clock: SimulatedClock) -> Iterator[Scene]:
    with scene(db, clock, templates=TEMPLATES) as s:
        yield s


def once(key: str, trigger: dict[str, Any], *steps: dict[str, Any]) -> dict[str, Any]:
    """A journey a contact enters once (re-entry `never`, the default, written out)."""
    return {"key": key, "trigger": trigger, "entry": {"reentry": "never"}, "steps": list(steps)}


def send(step_id: str, template: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "send", "channel": "email", "template": template, **extra}


def delivered(world: Scene, user: str) -> list[str]:
    """The subjects (template names) of what reached `user`'s inbox, in order."""
    return [o.content.subject for o in world.channel.sent_to(f"{user}@example.com")]  # type: ignore[union-attr]


def test_a_contact_who_qualifies_twice_gets_one_message(world: Scene) -> None:
    # Given a journey on a segment entry and one on an event, both re-entry `never`
    world.n.segments.save({"key": "pro", "where": {"trait": "plan", "eq": "pro"}})
    world.publish(once("pro_welcome", {"segment": "pro"}, send("hello", "welcome")))
    world.publish(once("trial_tip", {"event": "Trial Started"}, send("tip", "tip")))
    world.identify("ann", email="ann@example.com", plan="free")
    # When she enters the segment, leaves it and enters it again, and starts a trial twice
    # (two events) plus one retried delivery of the first
    for plan in ("pro", "free", "pro"):
        world.identify("ann", plan=plan)
        world.advance(timedelta(hours=1))
    world.track("ann", "Trial Started")
    first = f"m-{next(world._ids) - 1}"
    world.track("ann", "Trial Started")
    world.n.ingest([{"type": "track", "userId": "ann", "event": "Trial Started",
                     "messageId": first, "timestamp": world.clock.now().isoformat()}])  # fmt: skip
    world.advance(timedelta(days=1))
    # Then she qualified twice for each, and got each message once
    assert world.count(t.segment_changes, t.segment_changes.c.change == "entered") == 2
    assert sorted(delivered(world, "ann")) == ["tip", "welcome"]
    assert len(world.enrolments("pro_welcome")) == len(world.enrolments("trial_tip")) == 1


def test_republishing_mid_flight_neither_restarts_nor_repeats(world: Scene) -> None:
    # Given a two-step journey and a customer in its wait
    v1 = once("series", {"event": "Signed Up"},
              send("welcome", "welcome"), {"id": "pause", "type": "wait", "for": "1d"},
              send("tip", "tip"))  # fmt: skip
    world.publish(v1)
    world.identify("ann", email="ann@example.com")
    world.track("ann", "Signed Up")
    world.advance(timedelta(hours=1))
    # When it is re-published with a new first step and a new tip, and published again
    # unchanged (an `apply` run twice)
    v2 = once("series", {"event": "Signed Up"}, send("extra", "extra"), *v1["steps"][:2],
              send("tip", "tip_v2"))  # fmt: skip
    world.publish(v2)
    world.publish(v2)
    world.identify("bob", email="bob@example.com")
    world.track("bob", "Signed Up")
    world.track("ann", "Signed Up")  # ann again: re-entry never
    world.advance(timedelta(days=2))
    # Then ann finished the version she started on, without a message twice or a restart
    assert delivered(world, "ann") == ["welcome", "tip"]
    (ann,) = world.enrolments("series", "ann")
    assert ann.version == 1 and ann.status == "completed"
    # And bob, who entered after, got the new version
    assert delivered(world, "bob") == ["extra", "welcome", "tip_v2"]
    assert {e.version for e in world.enrolments("series")} == {1, 2}
    assert len(world.n.journeys.versions("series")) == 2


SPLIT = once(
    "split_test", {"event": "Signed Up"},
    send("welcome", "welcome"),
    {"id": "pause", "type": "wait", "for": "1h"},
    {"id": "ab", "type": "split", "paths": [{"name": "A", "weight": 1, "next": "try_a"},
                                            {"name": "B", "weight": 1, "next": "try_b"}]},
    send("try_a", "promo_a", next="end"),
    send("try_b", "promo_b"),
)  # fmt: skip
# The database refuses to record the split while `crash` holds a row: the worker's
# transaction dies half-way, as it would if the process were killed before its commit.
CRASH_SQLITE = [
    "CREATE TABLE crash (why TEXT)",
    "CREATE TRIGGER crash_split BEFORE INSERT ON journey_steps "
    "WHEN NEW.step = 'ab' AND EXISTS (SELECT 1 FROM crash) "
    "BEGIN SELECT RAISE(ABORT, 'worker died'); END",
]
CRASH_POSTGRES = [
    "CREATE TABLE crash (why TEXT)",
    "CREATE FUNCTION crash_split() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF EXISTS (SELECT 1 FROM crash) THEN RAISE EXCEPTION 'worker died'; END IF; "
    "RETURN NEW; END $$",
    "CREATE TRIGGER crash_split BEFORE INSERT ON journey_steps FOR EACH ROW "
    "WHEN (NEW.step = 'ab') EXECUTE FUNCTION crash_split()",
]


def test_a_split_retried_after_a_crash_sends_one_message_per_step(world: Scene) -> None:
    # Given 20 customers in a journey whose split comes after a one-hour wait
    world.publish(SPLIT)
    users = [f"u{i}" for i in range(20)]
    world.ingest([{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com"}}
                  for u in users])  # fmt: skip
    world.ingest([{"type": "track", "userId": u, "event": "Signed Up"} for u in users])
    with world.n.db.write() as conn:
        for statement in CRASH_SQLITE if world.n.db.is_sqlite else CRASH_POSTGRES:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO crash VALUES ('armed')"))
    # When the worker dies in the transaction that runs the split
    with pytest.raises(DBAPIError, match="worker died"):
        world.advance(timedelta(hours=1))
    assert world.count(t.journey_steps, t.journey_steps.c.step == "ab") == 0
    # And the next round (a restarted worker) runs the due steps again
    with world.n.db.write() as conn:
        conn.execute(text("DELETE FROM crash"))
    world.advance(timedelta(hours=1))
    # Then each customer ran the split once and got exactly one message per send step,
    # the one of the path the split took
    paths = Counter[str]()
    for user in users:
        (enrolment,) = world.enrolments("split_test", user)
        steps = world.steps(enrolment.id)
        assert [s for s, _ in steps] == ["welcome", "pause", "ab", steps[3][0]]
        path = dict(steps)["ab"]
        paths[path] += 1
        assert delivered(world, user) == [
            "welcome",
            {"path:A": "promo_a", "path:B": "promo_b"}[path],
        ]
    assert set(paths) == {"path:A", "path:B"}  # both paths were taken, each once per person
    keys = [m.idempotency_key for m in world.messages()]
    assert len(keys) == len(set(keys)) == 2 * len(users)


def test_variants_count_toward_caps_and_the_send_once_rule(
    db: Database, clock: SimulatedClock
) -> None:
    # Given one marketing email a week at most, an A/B promo sent once per contact, and a
    # newsletter
    policy = {**OPT_OUT, "caps": [{"channel": "email", "max": 1, "per": "7d", "over": "skip"}]}
    with scene(db, clock, templates=TEMPLATES, policy=policy) as world:
        world.publish(once("promo", {"event": "Promo Eligible"}, {
            "id": "offer", "type": "send", "channel": "email",
            "variants": [{"name": "A", "template": "promo_a"},
                         {"name": "B", "template": "promo_b"}],
        }))  # fmt: skip
        world.publish({"key": "news", "trigger": {"event": "Newsletter Due"},
                       "entry": {"reentry": "always"},
                       "steps": [send("issue", "newsletter")]})  # fmt: skip
        users = [f"u{i}" for i in range(12)]
        world.ingest([{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com"}}
                      for u in [*users, "nina", "zed"]])  # fmt: skip
        # When each becomes eligible for the promo twice, a day apart, then the newsletter
        # is due; nina gets only the newsletter; zed gets the newsletter first, then the promo
        world.ingest([{"type": "track", "userId": u, "event": "Promo Eligible"} for u in users])
        world.advance(timedelta(days=1))
        world.ingest([{"type": "track", "userId": u, "event": "Promo Eligible"} for u in users])
        world.ingest([{"type": "track", "userId": u, "event": "Newsletter Due"}
                      for u in [*users, "nina", "zed"]])  # fmt: skip
        world.advance(timedelta(hours=1))
        world.track("zed", "Promo Eligible")
        world.advance(timedelta(days=1))
        # Then each got exactly one promo, of one variant, and no newsletter that week
        variants = Counter[str]()
        for user in users:
            (got,) = delivered(world, user)
            variants[got] += 1
            rules = {m.template: m.rule for m in world.messages(user) if m.status == "skipped"}
            assert rules == {"newsletter": "frequency_cap"}
        assert set(variants) == {"promo_a", "promo_b"}
        assert len(world.enrolments("promo")) == len(users) + 1
        # And the cap counts the other way too: zed's variant was skipped after the newsletter
        assert delivered(world, "nina") == delivered(world, "zed") == ["newsletter"]
        (zed_promo,) = [m for m in world.messages("zed") if m.journey == "promo"]
        assert zed_promo.status == "skipped" and zed_promo.rule == "frequency_cap"


def test_two_workers_racing_send_each_step_once(db: Database, clock: SimulatedClock) -> None:
    if db.is_sqlite:
        pytest.skip("one writer on SQLite: workers take turns, there is no race to test")
    # Given two Nurture processes on one database and one provider, small batches so that
    # they interleave, and 100 customers entering a journey with a split
    provider = MemoryChannel(monotonic=clock.monotonic)
    settings = make_settings(str(db.url), policy=OPT_OUT, journey_batch=7, dispatch_batch=7)
    a, b = (Nurture(settings, clock=clock, db=db, channels={"email": provider}) for _ in "ab")
    with a, b:
        for key in TEMPLATES:
            a.templates.put(key, template(key))
        a.journeys.save(SPLIT, publish=True)
        users = [f"u{i}" for i in range(100)]
        now = clock.now().isoformat()
        a.ingest([{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com"}}
                  for u in users])  # fmt: skip
        a.ingest([{"type": "track", "userId": u, "event": "Signed Up", "messageId": f"s-{u}",
                   "timestamp": now} for u in users])  # fmt: skip

        worked = Counter[str]()

        def work(n: Nurture, name: str) -> None:
            while True:
                steps = n.journey_runtime.process_inbox() + n.journey_runtime.run_due()
                sent = n.dispatcher.run_due().sent
                worked[f"{name} steps"] += steps
                worked[f"{name} sent"] += sent
                if not steps + sent:
                    return

        # When both work at once, now and again after the wait
        for moment in (clock.now(), clock.now() + timedelta(hours=1)):
            clock.set(moment)
            threads = [threading.Thread(target=work, args=p) for p in ((a, "a"), (b, "b"))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # Then every customer has one enrolment, each step ran once, and each message
        # reached the provider once
        with db.read() as conn:
            enrolments = conn.execute(select(t.enrolments.c.status)).scalars().all()
            steps = conn.execute(select(t.journey_steps.c.step)).scalars().all()
            outbox = conn.execute(select(t.outbox.c.idempotency_key, t.outbox.c.status)).all()
        assert enrolments == ["completed"] * len(users)
        ran = Counter(steps)
        assert ran["welcome"] == ran["pause"] == ran["ab"] == ran["try_a"] + ran["try_b"] == 100
        assert len(outbox) == 200 and {s for _, s in outbox} == {"sent"}
        keys = [o.key for o in provider.sent]
        assert sorted(keys) == sorted(k for k, _ in outbox)
        # (and both workers took part: it was a race)
        assert all(worked[f"{n} {w}"] > 0 for n in "ab" for w in ("steps", "sent")), worked
