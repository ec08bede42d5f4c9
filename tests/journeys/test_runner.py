"""The journey worker's rounds (`JourneyRunner.round`): while events stream in, due steps
are claimed once per poll interval instead of every round, and at once when the inbox is
idle, so that no due step waits longer than the poll interval for a stream to end."""

from __future__ import annotations

from datetime import timedelta

from tests.journeys.world import World

from nurture.journeys.runner import JourneyRunner
from nurture.webhooks import RecordingWebhookCaller

# The first step is an HTTP call: entry cannot run it in the inbox's transaction, so it
# is left due for the next claim of due steps.
HOOK = {
    "key": "hook",
    "name": "Call on ping",
    "trigger": {"event": "Ping"},
    "entry": {"reentry": "always"},
    "steps": [{"id": "push", "type": "webhook", "url": "https://crm.example/ping"}],
}


def _ping(world: World, k: int) -> None:
    """Ingest a Ping without running any journey work."""
    world.n.ingest([
        {"type": "track", "userId": "p", "event": "Ping", "messageId": f"ping-{k}",
         "timestamp": world.clock.now().isoformat()}
    ])  # fmt: skip


def test_due_steps_are_claimed_once_per_poll_while_events_stream_and_at_once_when_idle(
    world: World, webhooks: RecordingWebhookCaller
) -> None:
    # Given a journey whose step is an HTTP call, a contact, and a runner whose last claim
    # of due steps found none
    world.publish(HOOK)
    world.identify("p")
    runner = JourneyRunner(world.n.journey_runtime, poll_seconds=0.2)
    assert runner.round() == 0
    # When a round consumes a Ping at the same moment: the call is due, not yet claimed
    _ping(world, 1)
    assert runner.round() == 1
    assert webhooks.requests == []
    (enrolment,) = world.enrolments("hook", "p")
    assert enrolment.step == "push" and enrolment.status == "active"
    # Then the next round, the inbox being idle, claims and makes it
    assert runner.round() == 1
    assert [r.url for r in webhooks.requests] == ["https://crm.example/ping"]
    # And a claim that found steps is followed by another at once; once one finds none,
    # while events keep coming, the next claim comes a poll interval later
    assert runner.round() == 0
    _ping(world, 2)
    assert runner.round() == 1  # the entry, its call left due
    assert len(webhooks.requests) == 1
    world.clock.advance(timedelta(seconds=0.2))
    _ping(world, 3)
    assert runner.round() == 3  # the third entry, and both calls claimed
    assert len(webhooks.requests) == 3
    assert {e.status for e in world.enrolments("hook", "p")} == {"completed"}
