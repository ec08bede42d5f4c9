"""The suppression list on SQLite and PostgreSQL, and the carriers' SMS keywords."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from nurture.core import Nurture
from nurture.errors import ValidationError
from nurture.messages.suppression import ErasedAddress, is_start_word, is_stop_word
from nurture.store import tables as t


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop. ",
        "STOP ALL",
        "stop all!",
        "STOPALL",
        "Unsubscribe",
        "cancel",
        "END",
        "quit",
        "OPTOUT",
        "revoke",
    ],
)
def test_stop_words(text: str) -> None:
    assert is_stop_word(text) and not is_start_word(text)


@pytest.mark.parametrize("text", ["START", "yes", "Unstop", "start!"])
def test_start_words(text: str) -> None:
    assert is_start_word(text) and not is_stop_word(text)


@pytest.mark.parametrize("text", ["please stop texting me", "STOPP", "", "no", "stopping"])
def test_sentences_are_not_keywords(text: str) -> None:
    assert not is_stop_word(text) and not is_start_word(text)


def test_addresses_are_normalised_before_hashing(nurture: Nurture) -> None:
    # Given an address suppressed as written in a bounce
    assert nurture.suppressions.add("email", " Bob@Example.COM", "bounced", "550 user unknown")
    # Then the same address in any case is suppressed, and adding it again changes nothing
    entry = nurture.suppressions.lookup("email", "bob@example.com")
    assert entry is not None and (entry.kind, entry.reason) == ("email", "bounced")
    assert not nurture.suppressions.add("email", "bob@example.com", "bounced")
    # And the row holds the salted hash the erasure code computes, never the address
    with nurture.db.read() as conn:
        (row,) = conn.execute(select(t.suppressions)).all()
    assert "bob" not in str(tuple(row)).lower()
    assert nurture.privacy.is_suppressed(email="BOB@example.com")


def test_the_address_is_scrubbed_from_the_detail(nurture: Nurture) -> None:
    nurture.suppressions.add(
        "email", "bob@example.com", "bounced", "550 5.1.1 <Bob@Example.com>: user unknown"
    )
    entry = nurture.suppressions.lookup("email", "bob@example.com")
    assert entry is not None and entry.detail == "550 5.1.1 <[address]>: user unknown"


def test_phones_are_read_as_e164_with_the_region(nurture: Nurture) -> None:
    nurture.suppressions.add("phone", "+1 (201) 555-0123", "stop")
    assert nurture.suppressions.lookup("phone", "+12015550123") is not None
    with pytest.raises(ValidationError) as caught:
        nurture.suppressions.add("phone", "201 555 0123", "stop")  # no region configured
    assert caught.value.path == "address"


def test_a_harder_reason_replaces_a_weaker_one_never_the_reverse(nurture: Nurture) -> None:
    s = nurture.suppressions
    # Given a number that replied STOP, then hard-bounced
    assert s.add("phone", "+12015550123", "stop")
    assert s.add("phone", "+12015550123", "bounced", "invalid number")
    # When it replies STOP again and then START
    assert not s.add("phone", "+12015550123", "stop")
    assert not s.remove("phone", "+12015550123")
    # Then it stays suppressed as bounced: START lifts only STOP
    entry = s.lookup("phone", "+12015550123")
    assert entry is not None and entry.reason == "bounced"


def test_start_lifts_a_stop(nurture: Nurture) -> None:
    assert nurture.suppressions.add("phone", "+12015550123", "stop", "STOP")
    assert nurture.suppressions.remove("phone", "+12015550123", reasons=("stop",))
    assert nurture.suppressions.lookup("phone", "+12015550123") is None


def test_an_erased_address_is_never_lifted(nurture: Nurture) -> None:
    # Given a contact erased under GDPR
    nurture.ingest([{"type": "identify", "userId": "u", "traits": {"email": "gone@example.com"}}])
    nurture.privacy.erase(int(nurture.contacts.lookup(user_id="u")["id"]))
    # When someone tries to lift its suppression, or to weaken it
    with pytest.raises(ErasedAddress):
        nurture.suppressions.remove("email", "gone@example.com", reasons=("manual", "bounced"))
    with pytest.raises(ErasedAddress):
        nurture.suppressions.remove("email", "gone@example.com", reasons=("erased",))
    assert not nurture.suppressions.add("email", "gone@example.com", "manual")
    # Then it stays suppressed as erased
    entry = nurture.suppressions.lookup("email", "gone@example.com")
    assert entry is not None and entry.reason == "erased"


def test_suppressed_checks_a_batch_in_one_query(nurture: Nurture) -> None:
    nurture.suppressions.add("email", "a@example.com", "complained")
    nurture.suppressions.add("phone", "+12015550123", "stop")
    with nurture.db.read() as conn:
        found = nurture.suppressions.suppressed(
            conn,
            [
                ("email", "A@example.com"),
                ("email", "b@example.com"),
                ("phone", "+1 201 555 0123"),
                ("email", "not an address"),
            ],
        )
    assert found == {("email", "A@example.com"), ("phone", "+1 201 555 0123")}


def test_unknown_reasons_and_kinds_are_refused(nurture: Nurture) -> None:
    with pytest.raises(ValidationError) as caught:
        nurture.suppressions.add("email", "a@example.com", "annoyed")  # type: ignore[arg-type]
    assert caught.value.path == "reason"
    with pytest.raises(ValidationError) as caught:
        nurture.suppressions.add("fax", "a@example.com", "manual")  # type: ignore[arg-type]
    assert caught.value.path == "kind"


def test_counts_by_kind_and_reason(nurture: Nurture) -> None:
    nurture.suppressions.add("email", "a@example.com", "bounced")
    nurture.suppressions.add("email", "b@example.com", "bounced")
    nurture.suppressions.add("phone", "+12015550123", "stop")
    assert nurture.suppressions.counts() == {("email", "bounced"): 2, ("phone", "stop"): 1}
    assert len(nurture.suppressions.recent(2)) == 2
