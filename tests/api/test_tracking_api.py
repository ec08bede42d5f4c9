"""The tracking routes through the real app, on SQLite and PostgreSQL: pixel, click
redirect, unsubscribe (page and RFC 8058 one-click), preference centre, double opt-in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from starlette.testclient import TestClient
from tests.conftest import make_settings

from nurture.api.app import create_app
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.messages.content import EmailContent
from nurture.messages.preferences import PreferencesConfig, Topic
from nurture.messages.tracking import MessageRef
from nurture.store import Database
from nurture.store import tables as t

BASE = "https://n.example.com"
TOPICS = PreferencesConfig(
    topics=[
        Topic(key="news", name="Newsletter", description="Monthly news"),
        Topic(key="offers", name="Offers", channels=["email", "sms"]),
    ]
)
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"


@pytest.fixture
def n(db: Database, clock: SimulatedClock) -> Iterator[Nurture]:
    settings = make_settings(str(db.url), public_url=BASE, preferences=TOPICS)
    instance = Nurture(settings, clock=clock, db=db)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def web(n: Nurture) -> Iterator[TestClient]:
    app = create_app(n, manage_lifecycle=False)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def ref(n: Nurture) -> MessageRef:
    n.ingest([{"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com"}}])
    now = n.clock.now()
    with n.db.write() as conn:
        contact = conn.execute(select(t.contacts.c.id)).scalar_one()
        outbox = conn.execute(
            insert(t.outbox)
            .values(
                idempotency_key="k1",
                contact_id=contact,
                channel="email",
                kind="marketing",
                topic="news",
                payload={},
                status="sent",
                created_at=now,
                send_after=now,
                provider="memory",
                provider_id="m-1",
            )
            .returning(t.outbox.c.id)
        ).scalar_one()
    return MessageRef(outbox, contact, "email", "news")


def _events(n: Nurture, name: str) -> list[Any]:
    with n.db.read() as conn:
        return conn.execute(select(t.events).where(t.events.c.event == name)).all()


def _decorated(n: Nurture, ref: MessageRef) -> EmailContent:
    html = '<html><body><a href="https://shop.example.com/?a=1&amp;b=2">Shop</a></body></html>'
    return n.tracker.decorate_email(EmailContent("Hi", "", html, "text"), ref)


def test_the_pixel_records_an_open(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given a decorated email
    pixel = re.search(r'src="([^"]+\.gif)"', _decorated(n, ref).html)
    assert pixel is not None
    # When the person's mail client loads the pixel, and Apple's privacy proxy does too
    seen = web.get(pixel.group(1), headers={"User-Agent": IPHONE})
    web.get(pixel.group(1), headers={"User-Agent": "Mozilla/5.0"})
    # Then it gets an uncacheable GIF
    assert seen.status_code == 200 and seen.headers["content-type"] == "image/gif"
    assert seen.content.startswith(b"GIF89a") and "no-store" in seen.headers["cache-control"]
    # And two opens are recorded, the proxy's marked as a machine's
    opens = sorted(_events(n, "email.opened"), key=lambda e: e.properties["machine"])
    assert [e.properties["machine"] for e in opens] == [False, True]
    assert opens[0].context["userAgent"] == IPHONE and opens[0].contact_id == ref.contact_id
    assert opens[0].properties["message"] == ref.outbox_id


def test_a_click_redirects_to_the_signed_target(
    n: Nurture, web: TestClient, ref: MessageRef
) -> None:
    # Given a decorated email
    link = re.search(r'href="([^"]+)"', _decorated(n, ref).html)
    assert link is not None
    # When the link is followed
    response = web.get(link.group(1), headers={"User-Agent": IPHONE}, follow_redirects=False)
    # Then it redirects to the original target and records the click with its URL
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example.com/?a=1&b=2"
    (event,) = _events(n, "email.clicked")
    assert event.properties["url"] == "https://shop.example.com/?a=1&b=2"


def test_a_tampered_click_never_redirects(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given a click token whose target was swapped for another site
    token = n.tracker.token("click", {**ref.payload(), "u": "https://shop.example.com/"})
    body, mac = token.split(".")
    forged = n.tracker.token("click", {**ref.payload(), "u": "https://evil.example.net/"})
    swapped = f"{forged.split('.')[0]}.{mac}"
    # When each bad link is followed
    for bad in (swapped, body, "nonsense", token + "x"):
        response = web.get(f"/t/c/{bad}", follow_redirects=False)
        # Then it answers an error page, never a redirect, and records nothing
        assert response.status_code == 400 and "location" not in response.headers
        assert "does not work" in response.text
    assert _events(n, "email.clicked") == []


def test_an_unsubscribe_link_asks_first(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given the unsubscribe link
    url = n.tracker.links(ref)["unsubscribe"]
    # When it is opened (as a scanner would)
    page = web.get(url)
    # Then a page with a button is shown and nothing changes
    assert page.status_code == 200 and '<form method="post"' in page.text
    assert n.consent.states(ref.contact_id) == {}
    # When the button is pressed
    done = web.post(url, data={"confirm": "1"})
    # Then the contact is unsubscribed from the message's topic
    assert done.status_code == 200 and "unsubscribed" in done.text
    assert n.consent.states(ref.contact_id) == {("email", "news"): "denied"}
    (event,) = _events(n, "email.unsubscribed")
    assert event.properties["topic"] == "news"


def test_one_click_unsubscribe_per_rfc_8058(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given the List-Unsubscribe URL of an email's headers
    header = n.tracker.email_headers(ref)["List-Unsubscribe"]
    url = header.strip("<>")
    # When a mail client POSTs the one-click body
    response = web.post(
        url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    # Then the contact is unsubscribed without any further interaction
    assert response.status_code == 200
    assert n.consent.states(ref.contact_id) == {("email", "news"): "denied"}


def test_the_preference_centre(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given the preferences link
    url = n.tracker.links(ref)["preferences"]
    # When it is opened
    page = web.get(url)
    # Then every configured topic is offered on its channels, unknown shown as subscribed
    assert page.status_code == 200
    for name in ("email:news", "email:offers", "sms:offers"):
        assert f'name="{name}" value="1" checked' in page.text
    # When the person keeps only the newsletter
    saved = web.post(url, data={"email:news": "1", "save": "1"})
    # Then the topics they unticked are denied, and the page says it saved
    assert "saved" in saved.text
    assert n.consent.states(ref.contact_id) == {
        ("email", "offers"): "denied",
        ("sms", "offers"): "denied",
    }
    assert 'name="email:offers" value="1">' in saved.text
    # When they unsubscribe from all marketing, then tick offers again
    n.clock.advance(timedelta(seconds=1))
    web.post(url, data={"unsubscribe_all": "1"})
    states = n.consent.states(ref.contact_id)
    assert states[("email", "*")] == "denied" and states[("sms", "*")] == "denied"
    n.clock.advance(timedelta(seconds=1))
    again = web.post(url, data={"email:offers": "1"})
    # Then offers is granted again (newest wins) and the newsletter stays off
    assert n.consent.states(ref.contact_id)[("email", "offers")] == "granted"
    assert 'name="email:offers" value="1" checked' in again.text
    assert 'name="email:news" value="1">' in again.text


def test_double_opt_in_asks_before_confirming(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given a pending double opt-in for the newsletter
    token = n.consent.request_confirmation(ref.contact_id, "email", "news", source="signup form")
    url = n.tracker.confirm_url(token)
    # When the confirm link is opened (as a mail scanner or link preview would), twice
    page = web.get(url)
    web.get(url, headers={"User-Agent": "Barracuda Sentinel (EE)"})
    # Then a page names what is confirmed and offers a button that posts back
    assert page.status_code == 200
    assert '<form method="post" action="/t/confirm/' in page.text
    assert "Newsletter by email" in page.text and "Confirm my subscription" in page.text
    assert page.headers["cache-control"].startswith("no-store")
    # And nothing changed: the consent waits, with no confirmation in its history
    assert n.consent.states(ref.contact_id) == {("email", "news"): "pending"}
    history = n.consent.document(ref.contact_id)["history"]
    assert [h["state"] for h in history] == ["pending"]


def test_double_opt_in_confirmation(n: Nurture, web: TestClient, ref: MessageRef) -> None:
    # Given a pending double opt-in, and the page its link opened
    token = n.consent.request_confirmation(ref.contact_id, "email", "news", source="signup form")
    url = n.tracker.confirm_url(token)
    page = web.get(url)
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    # When the person presses the button
    response = web.post(action.group(1), data={"confirm": "1"})
    # Then the consent is granted, with the confirmation's proof, and the person thanked
    assert response.status_code == 200 and "Thank you" in response.text
    assert n.consent.states(ref.contact_id)[("email", "news")] == "granted"
    last = n.consent.document(ref.contact_id)["history"][-1]
    assert (last["state"], last["source"]) == ("granted", "double opt-in")
    # When it is pressed again (a double click, a reload)
    again = web.post(action.group(1), data={"confirm": "1"})
    # Then it still thanks, and records nothing more
    assert again.status_code == 200 and "Thank you" in again.text
    assert len(n.consent.document(ref.contact_id)["history"]) == 2


def test_a_bad_confirm_link_is_refused_on_both_methods(
    n: Nurture, web: TestClient, ref: MessageRef
) -> None:
    # Given a pending opt-in, a forged link and a link signed for another purpose
    n.consent.request_confirmation(ref.contact_id, "email", "news", source="signup form")
    click = n.tracker.token("click", {**ref.payload(), "u": "https://shop.example.com/"})
    for bad in ("abc.def", click):
        # When each is opened and posted
        shown = web.get(f"/t/confirm/{bad}")
        posted = web.post(f"/t/confirm/{bad}", data={"confirm": "1"})
        # Then both answer an error page with no button, and the consent still waits
        assert shown.status_code == 400 and posted.status_code == 400
        assert "does not work" in shown.text and "<form" not in shown.text
    assert n.consent.states(ref.contact_id) == {("email", "news"): "pending"}


def test_an_expired_confirm_link_confirms_nothing(
    n: Nurture, web: TestClient, ref: MessageRef, clock: SimulatedClock
) -> None:
    # Given a double opt-in asked for longer ago than links stay valid
    token = n.consent.request_confirmation(ref.contact_id, "email", "*", source="signup form")
    clock.advance(n.consent.confirm_ttl + timedelta(seconds=1))
    # When the link is opened, and the button is pressed anyway
    page = web.get(n.tracker.confirm_url(token))
    response = web.post(n.tracker.confirm_url(token), data={"confirm": "1"})
    # Then the page says so at once (no button to press), and the consent still waits
    assert page.status_code == 400 and "expired" in page.text and "<form" not in page.text
    assert response.status_code == 400 and "expired" in response.text
    assert n.consent.states(ref.contact_id) == {("email", "*"): "pending"}
