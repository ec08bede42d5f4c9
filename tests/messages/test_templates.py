"""The template store and files, locale variants, email preparation and contexts from the
database, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from tests.conftest import make_settings

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.errors import NotFound, NurtureError
from nurture.messages.content import EmailContent, SmsContent
from nurture.messages.context import build_contexts
from nurture.messages.render import MissingValue, RenderError, TemplateProblem
from nurture.store import Database
from nurture.store import tables as t

WELCOME_YAML = """\
name: Welcome
locale: en
currency: EUR
traits: [plan]
defaults: {first_name: there}
email:
  subject: "Welcome, {{ contact.first_name }}"
  preheader: "Your {{ contact.plan | default: 'free' }} plan is ready"
sms:
  body: "Hi {{ contact.first_name }}, you spent {{ contact.computed.spent | money }}"
  max_segments: 1
locales:
  pt:
    email: {subject: "Bem-vindo, {{ contact.first_name }}"}
  pt-BR:
    sms: {body: "Oi {{ contact.first_name }}: {{ contact.computed.spent | money }}"}
"""
WELCOME_HTML = """\
<html><head><style>p { color: #333 }</style></head><body>
<p>Hi {{ contact.first_name }}, joined {{ contact.created_at | date: "long" }}</p>
<p><a href="{{ links.unsubscribe }}">Unsubscribe</a></p>
</body></html>
"""
LINKS = {"unsubscribe": "https://n.test/u/tok?a=1&b=2", "preferences": "https://n.test/p/tok"}


@pytest.fixture
def n(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[Nurture]:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "welcome.yaml").write_text(WELCOME_YAML)
    (folder / "welcome.html").write_text(WELCOME_HTML)
    (folder / "welcome.pt.html").write_text(WELCOME_HTML.replace("Hi", "Olá"))
    instance = Nurture(make_settings(str(db.url), project_dir=tmp_path), clock=clock, db=db)
    instance.start()
    # A computed trait, declared before any template is stored.
    instance.lifecycle.save(
        "computed", "spent", {"kind": "sum", "event": "Order Completed", "of": "revenue"}
    )
    yield instance
    instance.stop()


_ids = itertools.count(1)


def send(n: Nurture, message: dict[str, Any]) -> None:
    n.ingest([{**message, "messageId": f"m-{next(_ids)}", "timestamp": n.clock.now().isoformat()}])


def contact_id(n: Nurture, user: str) -> int:
    with n.db.read() as conn:
        c = t.contacts.c
        return int(conn.execute(select(c.id).where(c.user_id == user)).scalar_one())


def test_file_template_renders_email_with_locale_fallback(n: Nurture) -> None:
    # Given the file template (YAML + HTML beside it, a pt variant)
    template = n.templates.get("welcome")
    assert (template.source, template.channels) == ("file", ["email", "sms"])
    context = {"contact": {"id": 1, "created_at": "2026-01-15T10:00:00+00:00"}, "links": LINKS}
    # When rendered for a pt-BR contact without a first name
    email = n.templates.render(template, "email", context, "pt-BR", "America/Sao_Paulo")
    # Then pt-BR falls back to pt, the default fills the name, dates read in Portuguese
    assert isinstance(email, EmailContent)
    assert email.subject == "Bem-vindo, there"
    assert email.preheader == "Your free plan is ready"
    assert "Olá there, joined 15 de janeiro de 2026" in email.html
    # And the CSS is inlined, the link escaped, the preheader hidden first in the body
    assert '<p style="color: #333;">' in email.html
    assert 'href="https://n.test/u/tok?a=1&amp;b=2"' in email.html
    assert email.html.index("Your free plan") < email.html.index("Olá")
    # And the text part is made from the HTML, links as "text (url)"
    assert "Olá there, joined 15 de janeiro de 2026" in email.text
    assert "Unsubscribe (https://n.test/u/tok?a=1&b=2)" in email.text
    # When rendered for a contact in a language it does not have
    english = n.templates.render(template, "email", context, "fr-FR", None)
    # Then the default is used, dates in its own language
    assert isinstance(english, EmailContent) and english.subject == "Welcome, there"
    assert "joined January 15, 2026" in english.html


def test_contexts_from_the_database_with_computed_traits_and_merges(n: Nurture) -> None:
    # Given a Brazilian contact who bought twice, and one merged into another
    send(n, {"type": "identify", "userId": "ana", "traits": {
        "first_name": "Ana", "locale": "pt-BR", "plan": "  ", "nickname": None}})  # fmt: skip
    send(n, {"type": "track", "userId": "ana", "event": "Order Completed",
             "properties": {"revenue": 1000}})  # fmt: skip
    send(n, {"type": "track", "userId": "ana", "event": "Order Completed",
             "properties": {"revenue": 234.5}})  # fmt: skip
    send(n, {"type": "identify", "userId": "bo", "traits": {"first_name": "Bo"}})
    ana, bo = contact_id(n, "ana"), contact_id(n, "bo")
    with n.db.write() as conn:
        conn.execute(update(t.contacts).where(t.contacts.c.id == bo).values(merged_into=ana))
    rows = [
        {"id": 7, "contact_id": ana, "payload": {
            "journey": {"key": "welcome", "version": 1, "step": "hi"}, "enrolment": 3,
            "trigger": {"event": "Signed Up", "type": "track", "messageId": "x",
                        "timestamp": "2026-03-01T12:00:00+00:00", "properties": {"plan": "pro"}},
        }},
        {"id": 8, "contact_id": bo, "payload": {}},
        {"id": 9, "contact_id": 999_999, "payload": {}},
    ]  # fmt: skip
    # When their contexts are built in one batch
    with n.db.read() as conn:
        contexts = build_contexts(conn, rows, engine=n.engine, now=n.clock.now())
    # Then the contact has columns, traits, computed traits; blank traits are left out
    first = contexts[0]
    assert first is not None
    person = first["contact"]
    assert person["id"] == ana and person["first_name"] == "Ana" and person["locale"] == "pt-BR"
    assert person["computed"] == {"spent": 1234.5}
    assert "plan" not in person and "nickname" not in person["traits"]
    assert first["event"] == {
        "name": "Signed Up",
        "type": "track",
        "message_id": "x",
        "timestamp": "2026-03-01T12:00:00+00:00",
        "properties": {"plan": "pro"},
    }
    assert first["journey"] == {"key": "welcome", "version": 1, "step": "hi", "enrolment": 3}
    # And a merged contact's message gets the survivor; a gone contact gets None
    assert contexts[1] is not None and contexts[1]["contact"]["id"] == ana
    assert contexts[2] is None
    # When the SMS is rendered for her
    sms = n.templates.render(n.templates.get("welcome"), "sms", first, "pt-BR", None)
    # Then it is the pt-BR body with Brazilian money, GSM-7 (no-break spaces replaced)
    assert sms == SmsContent("Oi Ana: € 1.234,50", "GSM-7", 1)


def test_preview_with_a_real_contact(n: Nurture) -> None:
    # Given a contact
    send(n, {"type": "identify", "userId": "kim", "traits": {"first_name": "Kim"}})
    # When the SMS is previewed with her data, in German
    shown = n.templates.preview("welcome", contact_id=contact_id(n, "kim"), channel="sms")
    # Then it renders (no orders: spent is 0.0)
    assert shown["content"]["body"] == "Hi Kim, you spent €0.00"
    assert shown["content"]["segments"] == 1 and shown["variant"] == "default"
    with pytest.raises(NotFound):
        n.templates.preview("welcome", contact_id=424242)


def test_missing_values_and_limits_are_render_errors(n: Nurture) -> None:
    template = n.templates.get("welcome")
    # Given a context without computed traits / Then the SMS is refused naming the variable
    with pytest.raises(MissingValue) as caught:
        n.templates.render(
            template, "sms", {"contact": {"first_name": "A", "computed": {}}}, None, None
        )
    assert caught.value.variable == "contact.computed.spent"
    # Given a name so long the SMS needs two segments / Then the template's limit refuses it
    long = {"contact": {"first_name": "A" * 170, "computed": {"spent": 1}}}
    with pytest.raises(RenderError) as too_long:
        n.templates.render(template, "sms", long, None, None)
    assert too_long.value.code == "sms_too_long" and "2 segments" in too_long.value.message
    # And a channel the template does not have is an error too
    with pytest.raises(RenderError, match="no push part"):
        n.templates.render(template, "push", long, None, None)


def test_store_put_get_delete_and_precedence_over_files(n: Nurture) -> None:
    # Given a stored template with the key of a file template
    saved = n.templates.put(
        "welcome",
        {"name": "Hotfix", "push": {"title": "Hi {{ contact.first_name }}", "body": "New!"}},
    )
    assert saved["source"] == "api" and saved["channels"] == ["push"]
    # Then the stored one wins
    template = n.templates.get("welcome")
    push = n.templates.render(template, "push", {"contact": {"first_name": "Al"}}, None, None)
    assert (push.title, push.body, push.url) == ("Hi Al", "New!", None)  # type: ignore[union-attr]
    listed = {t["key"]: t for t in n.templates.all()}
    assert listed["welcome"]["shadows_file"] is True
    # When it is deleted, the file applies again
    n.templates.delete("welcome")
    assert n.templates.get("welcome").source == "file"
    with pytest.raises(NotFound):
        n.templates.delete("welcome")
    with pytest.raises(NotFound):
        n.templates.get("nope")


def test_put_refuses_invalid_templates_with_the_first_problem(n: Nurture) -> None:
    # Given a template reading a computed trait nobody declared
    body = {"sms": {"body": "{{ contact.computed.ltv }} {{ contact.favourite }}"}}
    # Then saving it fails, naming the field and position, and saying how many more
    with pytest.raises(TemplateProblem) as caught:
        n.templates.put("bad", body)
    assert caught.value.path == "sms.body" and caught.value.column == 4
    assert (
        "no computed trait 'ltv'" in caught.value.message and "(and 1 more)" in caught.value.message
    )


def test_mjml_bodies_compile_once(n: Nurture, tmp_path: Path) -> None:
    # Given an MJML template file
    (tmp_path / "templates" / "promo.yaml").write_text("email: {subject: Sale}\n")
    (tmp_path / "templates" / "promo.mjml").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{ contact.first_name }}</mj-text>"
        '<mj-button href="{{ links.preferences }}">Preferences</mj-button>'
        "</mj-column></mj-section></mj-body></mjml>"
    )
    # When rendered
    template = n.templates.get("promo")
    email = n.templates.render(
        template, "email", {"contact": {"first_name": "Jo"}, "links": LINKS}, None, None
    )
    # Then it is MJML's HTML with the values in, and a text part
    assert isinstance(email, EmailContent)
    assert email.html.startswith("<!doctype html>") or "<html" in email.html
    assert "Hi Jo" in email.html and 'href="https://n.test/p/tok"' in email.html
    assert "Hi Jo" in email.text and "Preferences (https://n.test/p/tok)" in email.text
    # And the same compiled template is reused until the file changes
    assert n.templates.get("promo") is template


def test_file_problems_are_reported_by_validate(n: Nurture, tmp_path: Path) -> None:
    # Given a broken file template and a body file without its YAML
    folder = tmp_path / "templates"
    (folder / "broken.yaml").write_text("sms:\n  body: 'Hi {{ contact.first_name '\n")
    (folder / "orphan.html").write_text("<p>x</p>")
    # When the files are validated
    found = n.templates.validate_files()
    # Then each problem names its file and field; the good template has none
    assert found["welcome"] == []
    assert found["broken"][0].path == "templates/broken.yaml.sms.body"
    assert "has no templates/orphan.yaml" in found["orphan"][0].message
    with pytest.raises(NurtureError):
        n.templates.get("broken")


def test_a_stored_template_leaves_evaluation_and_journeys_alone(n: Nurture) -> None:
    # Given a template stored through the API (a `definitions` row of kind template)
    n.templates.put("note", {"sms": {"body": "Hello"}})
    # Then segment evaluation and journey checks, which read every definition, still work
    # (they need segments/registry.py to skip kinds it does not parse)
    n.engine.evaluate_all()
    with n.db.read() as conn:
        assert "note" in n.journeys.catalog(conn).templates
