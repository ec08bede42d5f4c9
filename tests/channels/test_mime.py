"""The hand-built MIME: whatever goes in, the standard parser reads the same thing back."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import cast

import pytest

from nurture.channels.base import Email
from nurture.channels.mime import BadEmail, build, message_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _roundtrip(email: Email, key: str = "k") -> tuple[bytes, EmailMessage]:
    *_, data = build(email, key=key, date=NOW)
    return data, cast(EmailMessage, message_from_bytes(data, policy=policy.default))


def _text(part: EmailMessage | None) -> str:
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def test_mostly_non_ascii_text_is_base64_and_reads_back() -> None:
    # Given a Japanese email with a long subject
    subject = "カートに商品が残っています" * 8
    email = Email(
        "a@example.com", "Shop <s@shop.test>", subject, "<p>こんにちは</p>", "こんにちは" * 100
    )
    # When it is built
    data, msg = _roundtrip(email)
    # Then parts are base64, the subject folds into encoded words and reads back exactly
    assert b"Content-Transfer-Encoding: base64" in data
    assert msg["Subject"] == subject
    assert _text(msg.get_body(("plain",))) == "こんにちは" * 100
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_a_header_value_cannot_start_a_new_header() -> None:
    # Given a subject and a header value with line breaks in them
    email = Email("a@example.com", "s@shop.test", "Hi\r\nBcc: victim@x.test", "<p>x</p>", "x",
                  headers={"X-Campaign": "spring\nBcc: other@x.test"})  # fmt: skip
    # When it is built
    data, msg = _roundtrip(email)
    # Then no Bcc header exists; the breaks became spaces
    assert msg["Bcc"] is None and b"\r\nBcc:" not in data
    assert msg["Subject"] == "Hi Bcc: victim@x.test"


@pytest.mark.parametrize("name", ["From", "content-type", "Bad Name", "X:Y"])
def test_extra_headers_may_not_replace_ours_or_be_malformed(name: str) -> None:
    # Given an extra header that would replace one we write, or is not a header name
    email = Email("a@example.com", "s@shop.test", "Hi", "<p>x</p>", "x", headers={name: "v"})
    # When it is built, then it is refused naming the header
    with pytest.raises(BadEmail, match="cannot set the header"):
        build(email, key="k", date=NOW)


def test_single_part_and_message_id_and_idn() -> None:
    # Given an email with only HTML, to an international domain
    email = Email("zoë@bücher.example", "s@shop.test", "Hi", "<p>x</p>", "")
    # When it is built
    with pytest.raises(BadEmail, match="SMTPUTF8"):
        build(email, key="k", date=NOW)
    ok = Email("z@bücher.example", "s@shop.test", "Hi", "<p>x</p>", "")
    sender, to, mid, data = build(ok, key="outbox-1", date=NOW)
    msg = cast(EmailMessage, message_from_bytes(data, policy=policy.default))
    # Then the non-ASCII local part is refused, the domain is IDNA, the body one part
    assert to == "z@xn--bcher-kva.example" and sender == "s@shop.test"
    assert msg.get_content_type() == "text/html"
    assert mid == message_id("outbox-1", "shop.test") == msg["Message-ID"]
    assert message_id("outbox-1", "shop.test") != message_id("outbox-2", "shop.test")
