"""Peer bug: Mautic users find SES bounce handling unreliable: notifications delivered twice
are counted twice, a late "Delivery" overwrites a bounce, and a bounce that arrives before
the send was written down is lost, so the address keeps getting mail.

Here, through the real HTTP routes (signed SNS messages for SES, signed Event Webhook
requests for SendGrid), feedback about messages a journey sent through the dispatcher
arrives twice, out of order, and before the dispatcher has recorded the send (the
provider's webhook posted while its API call is still answering). Each message ends in the
right status (`sent` < `delivered` < `bounced` / `complained`), the contact's timeline has
one event per piece of feedback, and the address is suppressed once.

Naive implementations this catches: applying every POST (two `email.bounced` events, a
complaint recorded twice), "last write wins" statuses (a late delivery undoes the bounce),
and dropping feedback whose message is not found yet (the early bounce is lost, the
address stays deliverable).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from starlette.testclient import TestClient
from tests.api.test_feedback_api import SG_KEY, SG_PUBLIC, TOPIC, FakeSns
from tests.regressions.harness import Scene, scene

from nurture.api.app import create_app
from nurture.channels.base import Outgoing, Result, Sent
from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.messages.providers import FeedbackConfig
from nurture.store import Database
from nurture.store import tables as t

BASE = "https://n.example.com"
UNKNOWN_USER = "550 5.1.1 unknown user"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NEWS = {
    "key": "news",
    "trigger": {"event": "News Due"},
    "entry": {"reentry": "always"},
    "steps": [{"id": "issue", "type": "send", "channel": "email", "template": "news"}],
}
# Who gets which feedback, in the order it arrives; "early" gets it while the provider's
# API call is still answering, before the dispatcher records the send.
STORIES: dict[str, tuple[list[str], str, dict[str, int], str | None]] = {
    # user: (feedback in order, final status, feedback events, suppression)
    "twice": (["delivery", "delivery", "bounce", "bounce"], "bounced",
              {"email.delivered": 1, "email.bounced": 1}, "bounced"),
    "late": (["bounce", "delivery"], "bounced",
             {"email.delivered": 1, "email.bounced": 1}, "bounced"),
    "angry": (["complaint", "delivery", "complaint"], "complained",
              {"email.delivered": 1, "email.complained": 1}, "complained"),
    "early": (["delivery", "bounce", "bounce"], "bounced",
              {"email.delivered": 1, "email.bounced": 1}, "bounced"),
    "fine": (["delivery", "delivery"], "delivered", {"email.delivered": 1}, None),
}  # fmt: skip


class EarlyFeedback:
    """A provider whose webhook for a message arrives before its API call has answered
    (SES and SendGrid post within milliseconds; our commit can be slower)."""

    def __init__(self, inner: MemoryChannel) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.channels = inner.channels
        self.on_accepted: Callable[[Outgoing, str], None] = lambda _o, _p: None

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        results = self.inner.send(batch)
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Sent):
                self.on_accepted(item, result.provider_id)
        return results

    def close(self) -> None:
        self.inner.close()


class Webhooks:
    """Posts a provider's feedback about one message through the real route, signed."""

    def __init__(self, provider: str, web: TestClient, sns: FakeSns) -> None:
        self.provider, self.web, self.sns = provider, web, sns
        # A repeated piece of feedback is the provider repeating itself: the same body.
        self.bodies: dict[tuple[str, str], bytes] = {}

    def post(self, kind: str, address: str, outbox_id: int, provider_id: str) -> dict[str, int]:
        """Post it; the route's answer (received, stored, duplicates, applied, pending)."""
        key = (kind, address)
        if key not in self.bodies:
            uid = f"{address}-{kind}"
            self.bodies[key] = self._body(kind, address, outbox_id, provider_id, uid)
        body = self.bodies[key]
        if self.provider == "ses":
            response = self.web.post("/hooks/ses", content=body)
        else:
            stamp = "1772442000"
            signature = SG_KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            response = self.web.post("/hooks/sendgrid", content=body, headers={
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            })  # fmt: skip
        assert response.status_code == 200, response.text
        answer: dict[str, int] = response.json()
        return answer

    def _body(self, kind: str, address: str, outbox_id: int, provider_id: str, uid: str) -> bytes:
        at = "2026-03-02T09:00:05.000Z"
        if self.provider == "sendgrid":
            event = {"delivery": "delivered", "bounce": "bounce", "complaint": "spamreport"}[kind]
            return orjson.dumps([{
                "event": event, "sg_event_id": uid, "timestamp": 1772442005, "email": address,
                "sg_message_id": f"{provider_id}.filter0001", "outbox_id": str(outbox_id),
                "reason": UNKNOWN_USER if kind == "bounce" else None,
            }])  # fmt: skip
        details: dict[str, dict[str, Any]] = {
            "delivery": {"delivery": {"timestamp": at, "recipients": [address],
                                      "smtpResponse": "250 2.0.0 OK"}},
            "bounce": {"bounce": {"bounceType": "Permanent", "timestamp": at,
                                  "bouncedRecipients": [{"emailAddress": address,
                                                         "diagnosticCode": UNKNOWN_USER}]}},
            "complaint": {"complaint": {"timestamp": at, "complaintFeedbackType": "abuse",
                                        "complainedRecipients": [{"emailAddress": address}]}},
        }  # fmt: skip
        detail = details[kind]
        mail = {"messageId": provider_id, "timestamp": at}
        ses = {"notificationType": kind.capitalize(), "mail": mail, **detail}
        return self.sns.sign({"Type": "Notification", "MessageId": uid, "TopicArn": TOPIC,
                              "Message": orjson.dumps(ses).decode(), "Timestamp": at})  # fmt: skip


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def fake_sns() -> Iterator[FakeSns]:
    server = FakeSns()
    yield server
    server.server.shutdown()


@pytest.fixture(params=["ses", "sendgrid"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world(
    db: Database, clock: SimulatedClock, fake_sns: FakeSns, provider: str
) -> Iterator[tuple[Scene, EarlyFeedback, Webhooks]]:
    config = FeedbackConfig(sns_topic_arns=[TOPIC], sns_trusted_cert_prefixes=[fake_sns.url + "/"],
                            sendgrid_public_key=SG_PUBLIC)  # fmt: skip
    channel = EarlyFeedback(MemoryChannel(provider=provider, monotonic=clock.monotonic))
    with (
        scene(db, clock, templates=("news",), channels={"email": channel}, public_url=BASE,
              feedback=config) as s,
        TestClient(create_app(s.n, manage_lifecycle=False), base_url=BASE) as web,
    ):  # fmt: skip
        yield s, channel, Webhooks(provider, web, fake_sns)


def feedback_events(world: Scene, user: str) -> dict[str, int]:
    e = t.events.c
    with world.n.db.read() as conn:
        rows = conn.execute(
            select(e.event, func.count())
            .where(e.contact_id == world.contact(user), e.event.like("email.%"))
            .group_by(e.event)
        ).all()
    return {name: int(n) for name, n in rows}


def test_feedback_twice_out_of_order_or_early_ends_right_and_once(
    world: tuple[Scene, EarlyFeedback, Webhooks],
) -> None:
    scene_, channel, hooks = world
    # Given a newsletter journey and a customer for each story
    scene_.publish(NEWS)
    for user in STORIES:
        scene_.identify(user, email=f"{user}@example.com")
    # And the early story's feedback, posted while the provider's API call answers
    early_kinds = STORIES["early"][0]
    early_answers: list[dict[str, int]] = []

    def early(item: Outgoing, provider_id: str) -> None:
        if item.tags.get("contact_id") == str(scene_.contact("early")):
            for kind in early_kinds:
                outbox_id = int(item.tags["outbox_id"])
                early_answers.append(hooks.post(kind, "early@example.com", outbox_id, provider_id))

    channel.on_accepted = early
    # When the newsletter goes out
    scene_.ingest([{"type": "track", "userId": u, "event": "News Due"} for u in STORIES])
    sent = {m.contact_id: m for m in scene_.messages()}
    # (the early feedback was kept, not applied: the send was not recorded yet)
    assert [(a["stored"], a["applied"], a["pending"]) for a in early_answers] == [
        (1, 0, 1),
        (1, 0, 1),
        (0, 0, 0),
    ]
    # And the other stories' feedback arrives after the send was recorded
    for user, (kinds, _, _, _) in STORIES.items():
        if user == "early":
            continue
        message = sent[scene_.contact(user)]
        with scene_.n.db.read() as conn:
            pid = conn.execute(
                select(t.outbox.c.provider_id).where(t.outbox.c.id == message.id)
            ).scalar_one()
        for kind in kinds:
            hooks.post(kind, f"{user}@example.com", message.id, pid)
    # Then each message ended in the right status, with one event per piece of feedback,
    # and each bounced or complaining address is suppressed, once
    for user, (_, status, events, suppressed) in STORIES.items():
        (message,) = scene_.messages(user)
        assert message.status == status, user
        assert feedback_events(scene_, user) == events, user
        entry = scene_.n.suppressions.lookup("email", f"{user}@example.com")
        assert (entry.reason if entry else None) == suppressed, user
    assert scene_.count(t.suppressions) == sum(1 for s in STORIES.values() if s[3])
    assert scene_.count(t.message_feedback, t.message_feedback.c.applied_at.is_(None)) == 0
    # And the complaint also turned off email marketing for its author
    assert scene_.n.consent.states(scene_.contact("angry"))[("email", "*")] == "denied"
    # And the next newsletter reaches only the addresses that may still receive it
    scene_.ingest([{"type": "track", "userId": u, "event": "News Due"} for u in STORIES])
    assert [o.content.to for o in channel.inner.sent][len(STORIES) :] == ["fine@example.com"]  # type: ignore[union-attr]
