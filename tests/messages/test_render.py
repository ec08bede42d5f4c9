"""The Liquid sandbox: locale filters (Babel's exact output), missing values, what templates
may not do, and strict validation with line and column."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nurture.messages.render import (
    Locality,
    MissingValue,
    RenderError,
    TemplateProblem,
    babel_locale,
    compile_liquid,
    render_liquid,
)
from nurture.messages.template import check, fallback_chain, normalize_locale, parse_template

NOW = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


def render(source: str, context: dict[str, Any], locale: str = "en", tz: str = "UTC") -> str:
    here = Locality(babel_locale(locale), ZoneInfo(tz), "EUR", NOW)  # type: ignore[arg-type]
    return render_liquid(compile_liquid(source, "t"), context, here)


@pytest.mark.parametrize(
    ("source", "locale", "expected"),
    [
        ('{{ v | money: "EUR" }}', "de-DE", "1.234,50\xa0€"),
        ('{{ v | money: "EUR" }}', "en-US", "€1,234.50"),
        ('{{ v | money: "BRL" }}', "pt-BR", "R$\xa01.234,50"),
        ("{{ v | money }}", "fr-FR", "1\u202f234,50\xa0€"),  # the template's currency
        ("{{ v | number }}", "de-DE", "1.234,5"),
        ("{{ v | number: 2 }}", "en-US", "1,234.50"),
        ("{{ 0.256 | percent }}", "de-DE", "26\xa0%"),
        ('{{ "2026-05-03" | date: "long" }}', "pt-BR", "3 de maio de 2026"),
        ('{{ t | date: "medium" }}', "de-DE", "02.03.2026"),  # Berlin is past midnight
        ('{{ t | datetime: "short" }}', "en-US", "3/2/26, 12:30\u202fAM"),
        ('{{ t | date: "d MMMM y" }}', "de-DE", "2 März 2026"),
        ('{{ t | date: "%d.%m.%Y %H:%M" }}', "de-DE", "02.03.2026 00:30"),
        ('{{ "now" | time }}', "de-DE", "00:30"),
    ],
)
def test_filters_format_in_the_contacts_locale_and_zone(
    source: str, locale: str, expected: str
) -> None:
    # Given a value, a locale and the zone Europe/Berlin / When rendered
    out = render(source, {"v": 1234.5, "t": "2026-03-01T23:30:00Z"}, locale, "Europe/Berlin")
    # Then it reads as Babel (CLDR) writes it there
    assert out == expected


def test_a_missing_value_is_never_printed_as_nothing() -> None:
    # Given a contact without a first name
    context: dict[str, Any] = {"contact": {"id": 1}}
    # When a template prints it, it raises naming the variable
    with pytest.raises(MissingValue) as caught:
        render("Hi {{ contact.first_name }},", context)
    assert caught.value.variable == "contact.first_name" and caught.value.code == "missing_value"
    # And a filter or a loop over it raises the same way
    with pytest.raises(MissingValue):
        render("{{ contact.first_name | upcase }}", context)
    with pytest.raises(MissingValue) as nested:
        render("{{ contact.address.city }}", context)
    assert nested.value.variable == "contact.address"
    with pytest.raises(MissingValue):
        render("{{ contact.total | money }}", context)
    # But `default`, `if` and comparisons treat it as absent
    assert render('Hi {{ contact.first_name | default: "there" }},', context) == "Hi there,"
    assert render("{% if contact.first_name %}A{% else %}B{% endif %}", context) == "B"
    assert render("{% if contact.plan == 'pro' %}A{% endif %}", context) == ""


def test_bad_values_are_render_errors() -> None:
    # Given a value that is no number / Then money names the problem
    with pytest.raises(RenderError, match="expects a number"):
        render("{{ v | money }}", {"v": "lots"})


def test_values_are_escaped_in_html_only() -> None:
    # Given a trait with markup
    context = {"contact": {"first_name": "<b>Ann</b>"}}
    here = Locality(babel_locale("en"), ZoneInfo("UTC"), None, NOW)  # type: ignore[arg-type]
    html = compile_liquid("<p>{{ contact.first_name }}</p>", "h", html=True)
    # Then HTML bodies show it as text, text parts as is
    assert render_liquid(html, context, here) == "<p>&lt;b&gt;Ann&lt;/b&gt;</p>"
    assert render("{{ contact.first_name }}", context) == "<b>Ann</b>"


@pytest.mark.parametrize(
    ("source", "line", "column", "message"),
    [
        ("Hi\n  {{ contact.first_name | }}", 2, 6, "expected word"),
        ("a\n\n {% if contact.plan %}", 3, 5, "expected tag endif"),
        ("{% include 'secrets' %}", 1, 4, "unexpected tag 'include'"),
        ("x {% render 'other' %}", 1, 6, "unexpected tag 'render'"),
    ],
)
def test_syntax_errors_and_forbidden_tags_have_line_and_column(
    source: str, line: int, column: int, message: str
) -> None:
    # Given a template that does not compile (or reaches for other files)
    with pytest.raises(TemplateProblem) as caught:
        compile_liquid(source, "email.html")
    # Then the error says where
    assert (caught.value.line, caught.value.column) == (line, column)
    assert message in caught.value.message and caught.value.path == "email.html"


def test_runaway_loops_stop() -> None:
    # Given a loop far beyond any message / Then rendering stops with an error
    with pytest.raises(RenderError):
        render("{% for i in (1..1000000) %}x{% endfor %}", {})


def test_validation_names_unknown_variables_traits_and_filters() -> None:
    # Given a template with typos and names it cannot know
    definition = parse_template(
        {
            "traits": ["plan"],
            "defaults": {"nickname": "friend"},
            "email": {
                "subject": "{{ contact.frist_name }}: {{ contact.plan }} {{ contact.nickname }}",
                "html": "<p>{{ event.propertes.total }} {{ order.total }}</p>\n"
                "<p>{{ contact.computed.orders }} {{ contact.computed.ltv }} {{ x | shout }}</p>"
                '<a href="{{ links.unsubscribe }}">u</a>{{ links.nope }}',
            },
        }
    )
    # When checked with the computed traits declared
    problems = {
        (p.path, p.code, p.line, p.column): p.message
        for p in check(definition, computed={"orders"})
    }
    # Then each problem names its field, line and column
    assert set(problems) == {
        ("email.subject", "unknown_variable", 1, 4),
        ("email.html", "unknown_variable", 1, 7),
        ("email.html", "unknown_variable", 1, 35),
        ("email.html", "unknown_variable", 2, 37),
        ("email.html", "unknown_variable", 2, 64),
        ("email.html", "unknown_variable", 2, 122),
        ("email.html", "unknown_filter", 2, 68),
    }
    messages = " ".join(problems.values())
    assert "'frist_name' is not a standard trait" in messages
    assert "no computed trait 'ltv' is declared" in messages
    assert "unknown filter 'shout'" in messages


def test_shape_errors_and_missing_parts() -> None:
    # Given an email with no body and a locale the default cannot back
    definition = parse_template(
        {"email": {"subject": "x"}, "locales": {"de": {"sms": {"body": "x"}}}}
    )
    found = {(p.path, p.code) for p in check(definition)}
    # Then both are problems
    assert ("email.html", "invalid_template") in found
    assert ("locales.de.sms", "invalid_template") in found
    # And unknown fields, locales and currencies are refused with their path
    with pytest.raises(Exception, match="unknown field") as bad:
        parse_template({"email": {"subjet": "x"}})
    assert getattr(bad.value, "path", None) == "email.subjet"
    with pytest.raises(Exception, match="unknown locale"):
        parse_template({"sms": {"body": "x"}, "locales": {"xx-QQ": {}}})
    with pytest.raises(Exception, match="unknown currency"):
        parse_template({"sms": {"body": "x"}, "currency": "EURO"})


def test_locale_tags_and_fallback_chain() -> None:
    assert normalize_locale("pt_br") == "pt-BR"
    assert normalize_locale("zh-hant-tw") == "zh-Hant-TW"
    assert normalize_locale("not a locale") is None
    assert fallback_chain("pt-BR") == ["pt-BR", "pt"]
    assert fallback_chain("zh_Hant_TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert fallback_chain(None) == []
