"""The send-time policy decision, rule by rule (pure: no database; see test_facts.py for
the same rules fed from SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from nurture.messages.facts import ConsentState
from nurture.messages.policy import (
    Allow,
    Delay,
    PolicyConfig,
    PolicyFacts,
    PolicyMessage,
    Skip,
    decide,
    decide_all,
)
from nurture.messages.policy_config import OPT_IN_COUNTRIES

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a Sunday; Berlin is UTC+1 until March 29
DEFAULT = PolicyConfig()


def message(**fields: Any) -> PolicyMessage:
    base: dict[str, Any] = {
        "id": 1,
        "contact_id": 7,
        "channel": "email",
        "kind": "marketing",
        "topic": "newsletter",
        "payload": {},
        "send_after": NOW,
        "created_at": NOW,
    }
    return PolicyMessage(**{**base, **fields})


def facts(**fields: Any) -> PolicyFacts:
    base: dict[str, Any] = {
        "contact_id": 7,
        "country": "US",
        "timezone": "America/New_York",
        "email": "ann@example.com",
        "phone": "+12015550123",
    }
    return PolicyFacts(**{**base, **fields})


def granted(days_ago: int = 10) -> ConsentState:
    return ConsentState("granted", NOW - timedelta(days=days_ago))


def denied(days_ago: int = 1) -> ConsentState:
    return ConsentState("denied", NOW - timedelta(days=days_ago))


# -- who can be reached --------------------------------------------------------------------


def test_a_missing_contact_is_skipped() -> None:
    # Given facts for a contact that is gone (erased)
    # When deciding
    decision = decide(message(), PolicyFacts(7, found=False), DEFAULT, NOW)
    # Then it is skipped, saying so
    assert decision == Skip("no_contact", "contact 7 no longer exists")


@pytest.mark.parametrize(
    ("channel", "fields", "rule", "words"),
    [
        ("email", {"email": None}, "no_address", "no email"),
        ("email", {"email": None, "issues": {"email": "no @-sign"}}, "invalid_address", "@-sign"),
        ("sms", {"phone": None}, "no_address", "no phone"),
        ("voice", {"phone": None}, "no_address", "no phone"),
        ("sms", {"phone": "+4930123456"}, "invalid_address", "landline"),
        ("push", {"push": False}, "no_address", "push subscription"),
    ],
)
def test_an_unreachable_contact_is_skipped(
    channel: str, fields: dict[str, Any], rule: str, words: str
) -> None:
    # Given a contact without a usable address for the channel (transactional: no consent)
    # When deciding
    decision = decide(message(channel=channel, kind="transactional"), facts(**fields), DEFAULT, NOW)
    # Then it is skipped with the rule and a reason naming the problem
    assert isinstance(decision, Skip) and decision.rule == rule
    assert words in decision.reason


def test_a_landline_may_still_get_a_call() -> None:
    # Given a contact whose only number is a landline
    f = facts(phone="+4930123456")
    # When a transactional call is decided, Then it goes (only texts need a mobile)
    assert decide(message(channel="voice", kind="transactional"), f, DEFAULT, NOW) == Allow()


# -- suppression ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["bounced", "complained", "erased", "manual"])
@pytest.mark.parametrize("kind", ["marketing", "transactional"])
def test_a_hard_suppression_stops_every_email(reason: str, kind: str) -> None:
    # Given a suppressed email address of a contact who granted consent
    f = facts(suppressed={"ann@example.com": reason}, consents={("email", "*"): granted()})
    # When deciding a marketing or a transactional email
    decision = decide(message(kind=kind), f, DEFAULT, NOW)
    # Then it is skipped
    assert decision == Skip("suppressed", f"the email is suppressed ({reason})")


def test_stop_stops_every_text_but_not_calls_or_email() -> None:
    # Given a contact who replied STOP to a text
    f = facts(suppressed={"+12015550123": "stop"})
    # Then no text goes, not even a transactional one (CTIA)
    for kind in ("marketing", "transactional"):
        decision = decide(message(channel="sms", kind=kind), f, DEFAULT, NOW)
        assert decision == Skip("suppressed", "the phone is suppressed (stop)")
    # But a transactional call and a transactional email still go
    assert decide(message(channel="voice", kind="transactional"), f, DEFAULT, NOW) == Allow()
    assert decide(message(kind="transactional"), f, DEFAULT, NOW) == Allow()


def test_a_notification_checks_only_its_recipient() -> None:
    # Given a contact who opted out of everything and has no email at all
    f = facts(email=None, consents={("email", "*"): denied()})
    note = message(kind="notification", recipient="Sales@Example.com")
    # When a notification about the contact goes to a team member, Then it is allowed
    assert decide(note, f, DEFAULT, NOW) == Allow()
    # And once the team member's address bounced, it is skipped
    f.suppressed["sales@example.com"] = "bounced"
    assert decide(note, f, DEFAULT, NOW) == Skip(
        "suppressed", "Sales@Example.com is suppressed (bounced)"
    )


# -- consent -------------------------------------------------------------------------------


def test_the_default_opt_in_countries_are_the_eu_eea_uk_switzerland_and_canada() -> None:
    assert len(OPT_IN_COUNTRIES) == 33
    assert {"DE", "FR", "HU", "IS", "LI", "NO", "GB", "CH", "CA"} <= set(OPT_IN_COUNTRIES)
    assert "US" not in OPT_IN_COUNTRIES


@pytest.mark.parametrize(
    ("country", "config", "expected"),
    [
        ("DE", DEFAULT, "opt_in_required"),
        ("CA", DEFAULT, "opt_in_required"),
        ("US", DEFAULT, None),
        (None, DEFAULT, "opt_in_required"),
        (None, PolicyConfig(default_consent_mode="opt_out"), None),
        ("US", PolicyConfig(opt_in_countries=["us"]), "opt_in_required"),
    ],
)
def test_marketing_email_without_consent_depends_on_the_country(
    country: str | None, config: PolicyConfig, expected: str | None
) -> None:
    # Given a contact with no consent recorded, in a country (or none)
    f = facts(country=country)
    # When deciding a marketing email
    decision = decide(message(), f, config, NOW)
    # Then opt-in countries (and unknown ones, by default) need consent; others do not
    if expected is None:
        assert decision == Allow()
    else:
        assert isinstance(decision, Skip) and decision.rule == expected
        assert "needs opt-in" in decision.reason


def test_sms_marketing_needs_opt_in_everywhere_and_push_nowhere() -> None:
    # Given a US contact with no consent, and a push subscription
    f = facts(push=True)
    # Then marketing texts are skipped (TCPA), marketing pushes allowed
    sms = decide(message(channel="sms"), f, DEFAULT, NOW)
    assert isinstance(sms, Skip) and sms.rule == "opt_in_required"
    assert decide(message(channel="push"), f, DEFAULT, NOW) == Allow()
    # And the mode is per channel: sms set to follow the country allows it in the US
    # (and the other channels keep their defaults)
    by_country = PolicyConfig(consent_modes={"sms": "by_country"})
    afternoon = NOW + timedelta(hours=6)  # 13:00 in New York: no quiet hours
    assert decide(message(channel="sms"), f, by_country, afternoon) == Allow()
    assert by_country.consent_modes["push"] == "opt_out"


@pytest.mark.parametrize(
    ("consents", "expected"),
    [
        ({("email", "newsletter"): granted()}, Allow()),
        ({("email", "*"): granted()}, Allow()),
        ({("email", "newsletter"): denied()}, "consent"),
        ({("email", "*"): denied()}, "consent"),
        ({("email", "*"): granted(10), ("email", "newsletter"): denied(1)}, "consent"),
        ({("email", "*"): denied(10), ("email", "newsletter"): granted(1)}, Allow()),
        ({("email", "newsletter"): denied(10), ("email", "*"): granted(1)}, Allow()),
        ({("email", "newsletter"): ConsentState("pending", NOW)}, "opt_in_required"),
        ({("email", "product"): granted()}, "opt_in_required"),
        ({("sms", "*"): granted()}, "opt_in_required"),
    ],
)
def test_consent_the_latest_of_topic_and_channel_wide_speaks(
    consents: dict[tuple[str, str], ConsentState], expected: Any
) -> None:
    # Given a contact in Germany (opt-in) with these consents
    f = facts(country="DE", consents=consents)
    # When deciding a newsletter email
    decision = decide(message(), f, DEFAULT, NOW)
    # Then the newer of the topic's and the channel-wide consent decides
    if isinstance(expected, Allow):
        assert decision == expected
    else:
        assert isinstance(decision, Skip) and decision.rule == expected


def test_an_opt_out_names_the_scope_and_the_day() -> None:
    f = facts(consents={("email", "*"): denied(3)})
    assert decide(message(), f, DEFAULT, NOW) == Skip(
        "consent", "the contact opted out of email all topics on 2026-02-26"
    )


def test_transactional_messages_pass_opt_outs_and_missing_opt_in() -> None:
    # Given a German contact who opted out of all email and never opted in to texts
    f = facts(country="DE", consents={("email", "*"): denied()})
    # When a billing alert goes by email and by text, Then both are allowed
    assert decide(message(kind="transactional", topic=None), f, DEFAULT, NOW) == Allow()
    assert decide(message(channel="sms", kind="transactional"), f, DEFAULT, NOW) == Allow()


# -- quiet hours ---------------------------------------------------------------------------


def test_quiet_hours_delay_a_text_to_their_end_in_local_time() -> None:
    # Given a Berlin contact who opted in to texts, at 22:30 local (21:30 UTC)
    f = facts(country="DE", timezone="Europe/Berlin", consents={("sms", "*"): granted()})
    late = datetime(2026, 3, 1, 21, 30, tzinfo=UTC)
    # When deciding a marketing text
    decision = decide(message(channel="sms"), f, DEFAULT, late)
    # Then it waits until 09:00 Berlin (08:00 UTC), with a reason a person can read
    assert decision == Delay(
        datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
        "quiet_hours",
        "quiet hours for sms 21:00-09:00 Europe/Berlin: waits until 2026-03-02 09:00",
    )
    # And at 09:00 it goes
    assert decide(message(channel="sms"), f, DEFAULT, decision.until) == Allow()


def test_quiet_hours_hold_marketing_only_by_default_and_email_not_at_all() -> None:
    f = facts(timezone="Europe/Berlin", consents={("sms", "*"): granted()})
    late = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert decide(message(channel="sms", kind="transactional"), f, DEFAULT, late) == Allow()
    assert decide(message(), f, DEFAULT, late) == Allow()
    # And configured for every kind, they hold transactional texts too
    config = PolicyConfig(
        quiet_hours={"sms": {"start": "21:00", "end": "09:00", "kinds": ["transactional"]}}
    )
    held = decide(message(channel="sms", kind="transactional"), f, config, late)
    assert isinstance(held, Delay) and held.rule == "quiet_hours"


def test_quiet_hours_across_the_spring_forward_night() -> None:
    # Given a Berlin contact at 22:00 CET on March 28, 2026 (clocks jump at 02:00 that night)
    f = facts(timezone="Europe/Berlin", consents={("sms", "*"): granted()})
    at = datetime(2026, 3, 28, 21, 0, tzinfo=UTC)
    # When deciding a text, Then it waits until 09:00 CEST, which is 07:00 UTC
    decision = decide(message(channel="sms"), f, DEFAULT, at)
    assert isinstance(decision, Delay)
    assert decision.until == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)


def test_a_contact_without_a_timezone_uses_the_facts_default() -> None:
    # Given a contact whose zone load_facts resolved to the default UTC
    f = facts(timezone="UTC", consents={("sms", "*"): granted()})
    at = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    decision = decide(message(channel="sms"), f, DEFAULT, at)
    assert isinstance(decision, Delay) and decision.until == datetime(2026, 3, 2, 9, tzinfo=UTC)


# -- frequency caps ------------------------------------------------------------------------

CAPS = PolicyConfig(
    caps=[
        {"channel": "email", "max": 3, "per": "7d"},
        {"channel": "sms", "max": 1, "per": "1d", "over": "skip"},
    ]
)


def sent(*days_ago: float) -> list[datetime]:
    return sorted(NOW - timedelta(days=d) for d in days_ago)


def test_a_cap_delays_until_the_oldest_counted_send_leaves_the_window() -> None:
    # Given three marketing emails sent 6, 2 and 1 days ago (cap: 3 per 7 days)
    f = facts(sent={("email", "marketing"): sent(6, 2, 1)})
    # When deciding a fourth
    decision = decide(message(), f, CAPS, NOW)
    # Then it waits until the one sent 6 days ago is 7 days old
    assert isinstance(decision, Delay) and decision.rule == "frequency_cap"
    assert decision.until == NOW + timedelta(days=1)
    assert "3 marketing email per 7d" in decision.reason
    # And then it goes
    assert decide(message(), f, CAPS, decision.until) == Allow()


def test_under_the_cap_or_with_old_sends_it_goes() -> None:
    f = facts(sent={("email", "marketing"): sent(9, 8, 2, 1)})
    assert decide(message(), f, CAPS, NOW) == Allow()


def test_a_cap_set_to_skip_skips() -> None:
    f = facts(consents={("sms", "*"): granted()}, sent={("sms", "marketing"): sent(0.5)})
    decision = decide(message(channel="sms"), f, CAPS, NOW)
    assert decision == Skip("frequency_cap", "frequency cap of 1 marketing sms per 1d reached")


def test_caps_count_their_own_kind_only() -> None:
    # Given three transactional emails sent today
    f = facts(sent={("email", "transactional"): sent(0.1, 0.2, 0.3)})
    # Then a marketing email is not capped, and a transactional one has no cap by default
    assert decide(message(), f, CAPS, NOW) == Allow()
    assert decide(message(kind="transactional"), f, CAPS, NOW) == Allow()


def test_decide_all_counts_the_sends_it_allows() -> None:
    # Given two sends this week and three marketing emails to the same contact in one batch
    f = facts(sent={("email", "marketing"): sent(3, 2)})
    batch = [message(id=i, created_at=NOW + timedelta(seconds=i)) for i in (1, 2, 3)]
    # When deciding the batch
    decisions = decide_all(batch, {m.id: f for m in batch}, CAPS, NOW)
    # Then the first fills the cap and the other two wait
    assert decisions[1] == Allow()
    assert isinstance(decisions[2], Delay) and isinstance(decisions[3], Delay)


def test_a_cap_delay_that_lands_in_quiet_hours_waits_for_both() -> None:
    # Given a text cap of 1 per day, last text sent at 22:30 Berlin yesterday... in UTC terms
    config = PolicyConfig(caps=[{"channel": "sms", "max": 1, "per": "1d"}])
    f = facts(
        timezone="Europe/Berlin",
        consents={("sms", "*"): granted()},
        sent={("sms", "marketing"): [datetime(2026, 3, 1, 20, 30, tzinfo=UTC)]},
    )
    # When deciding a text the next morning at 10:00 Berlin
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    decision = decide(message(channel="sms"), f, config, at)
    # Then the cap frees it at 21:30 Berlin, inside quiet hours: it waits until 09:00
    assert decision == Delay(
        datetime(2026, 3, 3, 8, 0, tzinfo=UTC),
        "quiet_hours",
        "quiet hours for sms 21:00-09:00 Europe/Berlin: waits until 2026-03-03 09:00",
    )


# -- local send time -----------------------------------------------------------------------


def berlin(day: int, hour: int, minute: int = 0) -> datetime:
    """A Berlin wall time in March 2026 before the switch (UTC+1), as UTC."""
    return datetime(2026, 3, day, hour - 1, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (berlin(2, 8), berlin(2, 11)),  # before: later that day
        (berlin(2, 11, 30), None),  # within the hour's grace: now
        (berlin(2, 12, 30), berlin(3, 11)),  # after the grace: the next day
    ],
)
def test_send_at_waits_for_the_local_time(created: datetime, expected: datetime | None) -> None:
    # Given a Berlin contact and a message whose payload asks for 11:00
    f = facts(timezone="Europe/Berlin")
    m = message(kind="transactional", payload={"send_at": "11:00"}, created_at=created)
    # When deciding it at the moment it was queued
    decision = decide(m, f, DEFAULT, created)
    # Then it waits for 11:00 local (or goes, or waits for tomorrow)
    if expected is None:
        assert decision == Allow()
    else:
        assert isinstance(decision, Delay) and decision.rule == "send_time"
        assert decision.until == expected
        assert decide(m, f, DEFAULT, expected) == Allow()


def test_a_channel_send_time_applies_to_marketing_only() -> None:
    config = PolicyConfig(send_time={"channels": {"email": "10:00"}})
    f = facts(timezone="Europe/Berlin")
    early = berlin(2, 7)
    held = decide(message(created_at=early), f, config, early)
    assert isinstance(held, Delay) and held.until == berlin(2, 10)
    assert decide(message(kind="transactional", created_at=early), f, config, early) == Allow()


def test_a_send_time_inside_quiet_hours_does_not_loop() -> None:
    # Given a text asked for 23:00 Berlin, inside the 21:00-09:00 quiet hours
    f = facts(timezone="Europe/Berlin", consents={("sms", "*"): granted()})
    created = berlin(2, 14)
    m = message(channel="sms", payload={"send_at": "23:00"}, created_at=created)
    # When it is decided each time it comes due
    moments, at = [], created
    for _ in range(5):
        decision = decide(m, f, DEFAULT, at)
        if isinstance(decision, Allow):
            break
        assert isinstance(decision, Delay)
        moments.append(at := decision.until)
    # Then it goes at the end of those quiet hours and never moves to another day
    assert decision == Allow()
    assert moments == [berlin(3, 9)]


def test_send_at_in_the_spring_forward_gap_goes_when_the_clock_jumps_past_it() -> None:
    # Given 02:30 asked for on March 29, 2026, a time Berlin skips (02:00 -> 03:00)
    f = facts(timezone="Europe/Berlin")
    created = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    m = message(kind="transactional", payload={"send_at": "02:30"}, created_at=created)
    # Then it waits until 03:30 CEST (01:30 UTC), the wall time moved by the gap
    decision = decide(m, f, DEFAULT, created)
    assert isinstance(decision, Delay)
    assert decision.until == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_a_send_at_that_is_not_a_time_is_ignored() -> None:
    m = message(kind="transactional", payload={"send_at": "soon"})
    assert decide(m, facts(), DEFAULT, NOW) == Allow()


def test_config_refuses_bad_values_naming_them() -> None:
    with pytest.raises(ValueError, match="time of day"):
        PolicyConfig(quiet_hours={"sms": {"start": "25:00", "end": "09:00"}})
    with pytest.raises(ValueError, match="duration"):
        PolicyConfig(caps=[{"channel": "email", "max": 1, "per": "a week"}])
    with pytest.raises(ValueError, match="ISO country"):
        PolicyConfig(opt_in_countries=["Germany"])
    with pytest.raises(ValueError, match="extra"):
        PolicyConfig(quiet_hour={})


def test_a_bare_no_in_yaml_is_norway() -> None:
    # Given YAML 1.1, which reads a bare NO as false
    loaded = yaml.safe_load("opt_in_countries: [DE, NO]")
    assert loaded["opt_in_countries"] == ["DE", False]
    # Then the policy reads it as Norway
    assert PolicyConfig.model_validate(loaded).opt_in_countries == ("DE", "NO")


def test_facts_are_plain_data() -> None:
    # replace() works: tests and the dispatcher may derive facts
    f = replace(facts(), country="FR")
    assert decide(message(), f, DEFAULT, NOW) == Skip(
        "opt_in_required",
        "email marketing about 'newsletter' in FR needs opt-in; the contact gave none",
    )
