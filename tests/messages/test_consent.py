"""Consent with proof, and double opt-in, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError
from nurture.messages.tokens import BadToken, sign
from nurture.store import tables as t


@pytest.fixture
def ann(nurture: Nurture) -> int:
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"email": "a@example.com"}}])
    cid = int(nurture.contacts.lookup(user_id="ann")["id"])
    with nurture.db.write() as conn:  # evaluated already: only consent queues it again
        conn.execute(delete(t.pending_evaluations))
    return cid


def test_record_keeps_the_state_and_every_change_with_its_proof(nurture: Nurture, ann: int) -> None:
    # Given Ann opts in on a form, then unsubscribes a day later
    nurture.consent.record(
        ann,
        "email",
        "newsletter",
        "granted",
        source="signup form /pricing",
        ip="203.0.113.9",
        wording="Send me the newsletter",
    )
    nurture.clock.advance(timedelta(days=1))
    nurture.consent.record(ann, "email", "newsletter", "denied", source="unsubscribe link")
    # Then the state is the last one, and the history holds both with their proof
    assert nurture.consent.states(ann) == {("email", "newsletter"): "denied"}
    doc = nurture.consent.document(ann)
    assert [(h["state"], h["source"], h["ip"]) for h in doc["history"]] == [
        ("granted", "signup form /pricing", "203.0.113.9"),
        ("denied", "unsubscribe link", None),
    ]
    assert doc["history"][0]["wording"] == "Send me the newsletter"
    assert doc["current"][0]["recorded_at"] == nurture.clock.now()


def test_a_consent_change_queues_the_contact_for_full_evaluation(
    nurture: Nurture, ann: int
) -> None:
    # When Ann's consent changes
    nurture.consent.record(ann, "sms", "*", "granted", source="api")
    # Then she is queued to have every segment evaluated again
    with nurture.db.read() as conn:
        row = conn.execute(select(t.pending_evaluations)).one()
    assert (row.contact_id, row.full) == (ann, True)


def test_a_consent_segment_follows_the_change(nurture: Nurture, ann: int) -> None:
    # Given a segment of contacts who granted the newsletter
    nurture.segments.save(
        {"key": "subscribers", "where": {"consent": "email", "topic": "newsletter"}}
    )
    nurture.engine.evaluate_pending()
    assert nurture.segments.members("subscribers")["items"] == []
    # When Ann opts in and queued contacts are evaluated
    nurture.consent.record(ann, "email", "newsletter", "granted", source="form")
    nurture.engine.evaluate_pending()
    # Then she is a member
    assert [m["contactId"] for m in nurture.segments.members("subscribers")["items"]] == [ann]


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("fax", "*", "granted", "api"), "channel"),
        (("email", "*", "maybe", "api"), "state"),
        (("email", "", "granted", "api"), "topic"),
        (("email", "*", "granted", ""), "source"),
    ],
)
def test_record_refuses_what_it_cannot_hold(
    nurture: Nurture, ann: int, args: tuple[str, str, str, str], path: str
) -> None:
    channel, topic, state, source = args
    with pytest.raises(ValidationError) as caught:
        nurture.consent.record(ann, channel, topic, state, source=source)
    assert caught.value.path == path


def test_record_for_an_unknown_contact_is_not_found(nurture: Nurture) -> None:
    with pytest.raises(NotFound):
        nurture.consent.record(999, "email", "*", "granted", source="api")


def test_double_opt_in_pending_then_granted_with_proof(nurture: Nurture, ann: int) -> None:
    # Given Ann asks for the newsletter on a form showing some wording
    token = nurture.consent.request_confirmation(
        ann, "email", "newsletter", source="form /blog", ip="198.51.100.1", wording="Weekly news"
    )
    assert nurture.consent.states(ann) == {("email", "newsletter"): "pending"}
    # When she follows the link an hour later from another address
    nurture.clock.advance(timedelta(hours=1))
    assert nurture.consent.confirm(token, ip="198.51.100.2") == (ann, "email", "newsletter")
    # Then it is granted, with the confirmation as proof and the wording she was shown
    last = nurture.consent.document(ann)["history"][-1]
    assert (last["state"], last["source"], last["ip"], last["wording"]) == (
        "granted",
        "double opt-in",
        "198.51.100.2",
        "Weekly news",
    )
    # And following the link again (mail scanners do) records nothing more
    nurture.consent.confirm(token)
    assert len(nurture.consent.document(ann)["history"]) == 2


def test_an_expired_or_foreign_token_is_refused(nurture: Nurture, ann: int) -> None:
    token = nurture.consent.request_confirmation(ann, "email", "*", source="form")
    with pytest.raises(BadToken, match="signature"):
        nurture.consent.confirm(token[:-2] + "xx")
    click = sign(nurture.link_secret(), "click", {"c": ann, "ch": "email", "t": "*", "iat": 0})
    with pytest.raises(BadToken):
        nurture.consent.confirm(click)
    nurture.clock.advance(timedelta(days=7, seconds=1))
    with pytest.raises(BadToken, match="expired"):
        nurture.consent.confirm(token)
    assert nurture.consent.states(ann) == {("email", "*"): "pending"}


def test_asking_again_never_demotes_a_granted_consent(nurture: Nurture, ann: int) -> None:
    nurture.consent.record(ann, "email", "*", "granted", source="import")
    nurture.consent.request_confirmation(ann, "email", "*", source="form")
    assert nurture.consent.states(ann) == {("email", "*"): "granted"}


def test_start_double_opt_in_queues_one_confirmation_per_request(
    nurture: Nurture, ann: int
) -> None:
    # When a double opt-in is started twice with the same request key
    first = nurture.consent.start_double_opt_in(
        ann,
        "email",
        "newsletter",
        source="form",
        template="confirm_subscription",
        base_url="https://n.example.com",
        request_key="req-1",
    )
    again = nurture.consent.start_double_opt_in(
        ann,
        "email",
        "newsletter",
        source="form",
        template="confirm_subscription",
        base_url="https://n.example.com",
        request_key="req-1",
    )
    # Then one transactional message carries the confirm link, and one pending change
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.outbox)).all()
    assert len(rows) == 1
    (row,) = rows
    assert (row.kind, row.channel, row.template, row.status) == (
        "transactional",
        "email",
        "confirm_subscription",
        "queued",
    )
    url = row.payload["links"]["confirm"]
    assert url.startswith("https://n.example.com/t/confirm/") and url == first.confirm_url
    assert (first.created, again.created, again.outbox_id) == (True, False, first.outbox_id)
    assert len(nurture.consent.document(ann)["history"]) == 1
    # And the link confirms
    nurture.consent.confirm(url.rsplit("/", 1)[1])
    assert nurture.consent.states(ann) == {("email", "newsletter"): "granted"}


def test_double_opt_in_needs_a_channel_that_carries_a_link(nurture: Nurture, ann: int) -> None:
    with pytest.raises(ValidationError) as caught:
        nurture.consent.start_double_opt_in(
            ann, "push", "*", source="form", template="x", base_url="https://n.example.com"
        )
    assert caught.value.path == "channel"
