"""Personalised renders per second: one template parsed once, rendered for many contacts.

    python -m bench.templates [--renders 20000]

Rows: an email of about 3 KB of HTML with a <style> block, money and date filters in the
contact's locale and zone, its text part derived once from the HTML (and, for comparison,
made from each rendered HTML); an SMS with money; a push. Contexts vary per render (names,
locales, zones, totals), as a dispatch batch does. Target: 10,000 renders/s.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nurture.clock import SimulatedClock
from nurture.messages.template import parse_template
from nurture.messages.templates import Template, TemplateService

TARGET = 10_000
ROW = (
    "<tr><td class='cell'>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
    "eiusmod tempor incididunt ut labore et dolore magna aliqua.</td></tr>\n"
)
HTML = (
    "<html><head><style>.cell{padding:8px;font-family:Arial,sans-serif;color:#333}"
    "h1{font-size:22px} a{color:#0a6}@media (max-width:600px){h1{font-size:18px}}</style>"
    "</head><body><h1>Hi {{ contact.first_name }},</h1>"
    "<p>Your order of {{ event.properties.total | money }} from "
    "{{ event.timestamp | date: 'long' }} ships soon.</p><table>" + ROW * 14 + "</table>"
    "{% if contact.plan %}<p>Your plan: {{ contact.plan }}</p>{% endif %}"
    '<p><a href="{{ links.preferences }}">Preferences</a> · '
    '<a href="{{ links.unsubscribe }}">Unsubscribe</a></p></body></html>'
)
BODY: dict[str, Any] = {
    "currency": "EUR",
    "traits": ["plan"],
    "defaults": {"first_name": "there"},
    "email": {
        "subject": "{{ contact.first_name }}, your order of {{ event.properties.total | money }}",
        "preheader": "Shipping {{ event.timestamp | date: 'short' }}",
        "html": HTML,
    },
    "sms": {"body": "Hi {{ contact.first_name }}, {{ event.properties.total | money }} paid"},
    "push": {"title": "Hi {{ contact.first_name }}", "body": "Your order ships", "url": "/o"},
    "locales": {"de": {"email": {"subject": "{{ contact.first_name }}, deine Bestellung"}}},
}
PEOPLE = [
    ("Ann", "en-US", "America/New_York"),
    ("Jonas", "de-DE", "Europe/Berlin"),
    ("Ana", "pt-BR", "America/Sao_Paulo"),
    ("Léa", "fr-FR", "Europe/Paris"),
]


def contexts(n: int) -> list[tuple[dict[str, Any], str, str]]:
    out = []
    for i, (name, locale, zone) in zip(range(n), itertools.cycle(PEOPLE), strict=False):
        context = {
            "contact": {"id": i, "first_name": f"{name}{i}", **({"plan": "pro"} if i % 2 else {})},
            "event": {
                "timestamp": "2026-03-01T12:00:00+00:00",
                "properties": {"total": 10 + i % 997 + 0.5},
            },
            "links": {
                "unsubscribe": f"https://n.test/u/{i}.sig",
                "preferences": f"https://n.test/p/{i}.sig",
            },
        }
        out.append((context, locale, zone))
    return out


def measure(render: Callable[[dict[str, Any], str, str], Any], n: int) -> float:
    batch = contexts(n)
    for context, locale, zone in batch[:200]:  # compile and warm caches per locale
        render(context, locale, zone)
    start = time.perf_counter()
    for context, locale, zone in batch:
        render(context, locale, zone)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=20_000)
    args = parser.parse_args(argv)
    service = TemplateService(
        None,  # type: ignore[arg-type]  # rendering reads no database
        SimulatedClock(datetime(2026, 3, 1, tzinfo=UTC)),
        Path("."),
    )
    template = Template("bench", parse_template(BODY), "api", "bench")
    per_render = Template(
        "bench2",
        parse_template({**BODY, "email": {**BODY["email"], "html": "<table>{% if contact.plan %}"
                        "<tr><td>x</td></tr>{% endif %}</table>" + HTML}}),
        "api",
        "bench2",
    )  # fmt: skip

    def render(t: Template, channel: str) -> Callable[[dict[str, Any], str, str], Any]:
        return lambda context, locale, zone: service.render(t, channel, context, locale, zone)

    size = len(HTML.encode())
    rows = [
        (f"email, {size / 1024:.1f} KB HTML, text derived once", render(template, "email")),
        ("email, text made from each rendered HTML", render(per_render, "email")),
        ("sms with money", render(template, "sms")),
        ("push", render(template, "push")),
    ]
    print(f"{'template':<46} {'renders/s':>10}  target {TARGET:,}")
    worst = 0.0
    for label, fn in rows:
        rate = measure(fn, args.renders)
        worst = rate if not worst else min(worst, rate)
        print(f"{label:<46} {rate:>10,.0f}  {'met' if rate >= TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
