"""Contact search and pagination, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from nurture.core import Nurture
from nurture.errors import ValidationError


def identify(user_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "traits": traits, "messageId": f"id-{user_id}"}


@pytest.fixture
def people(nurture: Nurture, send: Any) -> dict[str, int]:
    """Given four identified people and one anonymous visitor."""
    send(
        identify("u-ada", email="Ada.Lovelace@Example.com", first_name="Ada", last_name="Lovelace"),
        identify("u-alan", email="alan@turing.org", name="Alan Turing", phone="+44 20 7946 0958"),
        identify("u-grace", email="grace@navy.mil", name="Grace Hopper", phone="+1 (415) 555-0123"),
        identify("EMILE-1", name="Émile Zola", email="emile@example.fr"),
        {"type": "track", "anonymousId": "anon-visitor-7", "event": "Page Viewed"},
    )
    found = nurture.contacts.search(limit=100)["items"]
    return {c["user_id"] or "anon": c["id"] for c in found}


def ids(page: dict[str, Any]) -> list[int]:
    return [c["id"] for c in page["items"]]


@pytest.mark.parametrize(
    ("q", "who"),
    [
        ("ada.lovelace@", "u-ada"),  # part of the email, other case
        ("EXAMPLE.COM", "u-ada"),
        ("u-ala", "u-alan"),  # part of the user id
        ("emile-", "EMILE-1"),  # user id, ignoring case
        ("ada lovelace", "u-ada"),  # first_name + last_name
        ("hopper", "u-grace"),  # name
        ("émile", "EMILE-1"),  # non-ASCII name as typed
        ("(415) 555-0123", "u-grace"),  # phone in national notation
        ("7946", "u-alan"),  # part of the phone
        ("anon-visitor-7", "anon"),  # an anonymous id, exactly
    ],
)
def test_search_matches_each_field(
    nurture: Nurture, people: dict[str, int], q: str, who: str
) -> None:
    # When searching for q
    page = nurture.contacts.search(q)
    # Then exactly that person is found
    assert ids(page) == [people[who]], page
    assert page["next_after_id"] is None


def test_search_treats_like_wildcards_literally(nurture: Nurture, people: dict[str, int]) -> None:
    # Given nobody whose fields contain "%" or "_"
    # When searching for them Then nothing matches (they are not wildcards)
    assert nurture.contacts.search("%")["items"] == []
    assert nurture.contacts.search("a_a")["items"] == []
    # And a partial anonymous id is not a match (anonymous ids match exactly)
    assert nurture.contacts.search("anon-visitor")["items"] == []


def test_pages_cover_everyone_once_without_tombstones(nurture: Nurture, send: Any) -> None:
    # Given seven anonymous visitors, two of whom then identify as the same user
    send(*[{"type": "page", "anonymousId": f"a{n}", "name": "Home"} for n in range(7)])
    send(
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "u1", "anonymousId": "a2"},
    )
    # When paging through all contacts two at a time
    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        page = nurture.contacts.search(after_id=after, limit=2)
        seen += ids(page)
        pages += 1
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    # Then every live contact appears once, in id order, and the merged one not at all
    assert len(seen) == 6 and seen == sorted(set(seen))
    assert pages == 3
    profile = nurture.contacts.lookup(user_id="u1")
    assert set(profile["anonymous_ids"]) == {"a1", "a2"}
    assert len(profile["merged_contact_ids"]) == 1
    assert profile["merged_contact_ids"][0] not in seen


def test_bad_limit_and_nul_are_refused(nurture: Nurture) -> None:
    # When asking for an impossible page size or a NUL in the query
    # Then a validation error names the field
    with pytest.raises(ValidationError) as exc:
        nurture.contacts.search(limit=0)
    assert exc.value.path == "limit"
    with pytest.raises(ValidationError) as exc:
        nurture.contacts.search("a\x00b")
    assert exc.value.path == "q"
