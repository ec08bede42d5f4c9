"""The preference centre: which topics a contact hears about, per channel, and the pages
behind the links in messages (unsubscribe, preferences, double opt-in), rendered on the
server as plain HTML forms (no script, so they work in every mail client's browser).

Consent is read and written through ConsentService; this module decides what the page
shows and which consent changes a submitted form means.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ALL = "*"  # the topic that stands for every marketing topic of a channel
_CHANNEL_NAMES = {"email": "Email", "sms": "Text messages", "voice": "Calls", "push": "Push"}


class Topic(BaseModel):
    """One subject a contact can subscribe to, on the channels it is sent on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str
    description: str = ""
    channels: list[str] = Field(default_factory=lambda: ["email"], min_length=1)


class PreferencesConfig(BaseModel):
    """The `preferences` setting: the topics the preference centre offers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[Topic] = Field(default_factory=list)
    title: str = "Your email preferences"

    @field_validator("topics")
    @classmethod
    def _unique(cls, topics: list[Topic]) -> list[Topic]:
        seen: set[str] = set()
        for topic in topics:
            if topic.key in seen:
                raise ValueError(f"topic {topic.key!r} is listed twice")
            seen.add(topic.key)
        return topics


# (channel, topic) -> (state, recorded_at): the contact's current consents.
Consents = Mapping[tuple[str, str], tuple[str, datetime]]


def consents_of(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, datetime]]:
    """Consents from `consents` rows (ConsentService.document()["current"])."""
    return {(r["channel"], r["topic"]): (r["state"], r["recorded_at"]) for r in rows}


@dataclass(frozen=True, slots=True)
class Choice:
    """One checkbox of the page: a topic on a channel."""

    channel: str
    topic: str
    name: str
    description: str
    subscribed: bool
    pending: bool

    @property
    def field(self) -> str:
        return f"{self.channel}:{self.topic}"


def topics_for(config: PreferencesConfig, channel: str) -> list[Topic]:
    """The configured topics, or one "all marketing" topic for `channel` when none are."""
    if config.topics:
        return list(config.topics)
    return [Topic(key=ALL, name="Marketing messages", channels=[channel])]


def effective(consents: Consents, channel: str, topic: str) -> str | None:
    """A topic's state as the send-time policy reads it: of the topic's own consent and
    the channel-wide one, the one recorded last (the topic's own on a tie); None: unknown."""
    own = consents.get((channel, topic)) if topic != ALL else None
    overall = consents.get((channel, ALL))
    if overall is not None and (own is None or overall[1] > own[1]):
        return overall[0]
    return own[0] if own is not None else None


def choices(config: PreferencesConfig, consents: Consents, channel: str) -> list[Choice]:
    """What the page shows. An unknown state shows as subscribed: the page records only
    what the person changes, and the send-time policy decides what unknown allows."""
    out = []
    for topic in topics_for(config, channel):
        for ch in topic.channels:
            state = effective(consents, ch, topic.key)
            out.append(
                Choice(
                    ch,
                    topic.key,
                    topic.name,
                    topic.description,
                    subscribed=state != "denied",
                    pending=state == "pending",
                )
            )
    return out


def changes(
    config: PreferencesConfig, consents: Consents, channel: str, checked: set[str]
) -> list[tuple[str, str, str]]:
    """The consent writes (channel, topic, state) a submitted form means; `checked` holds
    the field names of the ticked boxes. Only what differs from the page is written, and
    being newest, it is what the policy reads (even after an "unsubscribe from all")."""
    out = []
    for choice in choices(config, consents, channel):
        wanted = choice.field in checked
        if wanted != choice.subscribed:
            out.append((choice.channel, choice.topic, "granted" if wanted else "denied"))
    return out


def channels_of(config: PreferencesConfig, channel: str) -> list[str]:
    """The channels the page offers ("unsubscribe from all" denies each)."""
    return sorted({ch for topic in topics_for(config, channel) for ch in topic.channels})


# -- pages ------------------------------------------------------------------------------
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;"
    "color:#222;line-height:1.5}button{font-size:1rem;padding:.5rem 1.2rem;cursor:pointer}"
    "label{display:block;margin:.6rem 0}small{color:#666;display:block;margin-left:1.6rem}"
    "fieldset{border:1px solid #ddd;margin:1rem 0}.note{background:#eef7ee;padding:.5rem}"
)


def page(title: str, body: str) -> str:
    """A complete HTML page around `body` (already escaped)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def preferences_page(
    config: PreferencesConfig, consents: Consents, channel: str, action: str, *, saved: bool
) -> str:
    """The preference centre form, posting back to `action`."""
    by_channel: dict[str, list[Choice]] = {}
    for choice in choices(config, consents, channel):
        by_channel.setdefault(choice.channel, []).append(choice)
    sets = []
    for ch, items in by_channel.items():
        boxes = "".join(
            f'<label><input type="checkbox" name="{html.escape(c.field)}" value="1"'
            f"{' checked' if c.subscribed else ''}> {html.escape(c.name)}"
            f"{' (waiting for your confirmation)' if c.pending else ''}"
            f"{f'<small>{html.escape(c.description)}</small>' if c.description else ''}</label>"
            for c in items
        )
        legend = html.escape(_CHANNEL_NAMES.get(ch, ch))
        sets.append(f"<fieldset><legend>{legend}</legend>{boxes}</fieldset>")
    note = '<p class="note">Your preferences are saved.</p>' if saved else ""
    body = (
        f'{note}<form method="post" action="{html.escape(action)}">{"".join(sets)}'
        '<button type="submit" name="save" value="1">Save preferences</button></form>'
        f'<form method="post" action="{html.escape(action)}"><p>'
        '<button type="submit" name="unsubscribe_all" value="1">'
        "Unsubscribe from all marketing</button></p></form>"
    )
    return page(config.title, body)


def unsubscribe_page(action: str, preferences: str | None) -> str:
    """The page an unsubscribe link opens: a button, because mail scanners follow links
    (a GET never unsubscribes)."""
    more = (
        f'<p>Or <a href="{html.escape(preferences)}">choose what you hear about</a>.</p>'
        if preferences
        else ""
    )
    body = (
        f'<form method="post" action="{html.escape(action)}"><p>Stop receiving these '
        'messages?</p><button type="submit" name="confirm" value="1">Unsubscribe</button>'
        f"</form>{more}"
    )
    return page("Unsubscribe", body)


def unsubscribed_page(preferences: str | None) -> str:
    """What follows an unsubscribe."""
    more = (
        f'<p><a href="{html.escape(preferences)}">Manage your preferences</a></p>'
        if preferences
        else ""
    )
    return page("You are unsubscribed", f"<p>You will not receive these messages again.</p>{more}")


def confirm_page(action: str, config: PreferencesConfig, channel: str, topic: str) -> str:
    """The page a double opt-in link opens: a button that POSTs to `action`, because
    mail scanners follow links (a GET never confirms)."""
    names = {t.key: t.name for t in config.topics}
    what = "all our marketing" if topic == ALL else names.get(topic, topic)
    how = _CHANNEL_NAMES.get(channel, channel).lower()
    body = (
        f'<form method="post" action="{html.escape(action)}">'
        f"<p>Please confirm that you want to receive {html.escape(what)} by "
        f"{html.escape(how)}.</p>"
        '<button type="submit" name="confirm" value="1">Confirm my subscription</button>'
        "</form><p><small>If you did not ask for this, ignore this page: nothing changes "
        "until you press the button.</small></p>"
    )
    return page("Confirm your subscription", body)


def confirmed_page() -> str:
    """The thank-you page of a double opt-in confirmation."""
    return page("Thank you", "<p>Your subscription is confirmed.</p>")


def problem_page(title: str, message: str) -> str:
    """A page for a link that cannot be used (bad signature, unknown message)."""
    return page(title, f"<p>{html.escape(message)}</p>")
