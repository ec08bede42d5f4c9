"""The SMTP adapter against a real SMTP server (aiosmtpd) started by each test: what the
server receives, pooling, STARTTLS with AUTH, implicit TLS, and lost connections."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.channels import servers

from nurture.channels.base import Email, Failed, Outgoing, Retry, Sent
from nurture.channels.mime import message_id
from nurture.channels.smtp import SmtpChannel, classify_reply
from nurture.clock import SimulatedClock

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _email(to: str = "zoe@example.com", **changes: Any) -> Email:
    fields: dict[str, Any] = {
        "to": to,
        "to_name": "Zoë Müller",
        "from_address": "hi@acme.test",
        "from_name": "Acme Café",
        "subject": "Grüße — your cart misses you 🛒",
        "html": "<html><body><p>Hallo Zoë,</p><p>" + "lorem ipsum " * 300 + "</p></body></html>",
        "text": "Hallo Zoë,\n\n" + "lorem ipsum " * 300,
        "preheader": "Still thinking it over?",
        "reply_to": "Support <help@acme.test>",
        "headers": {
            "List-Unsubscribe": "<https://n.acme.test/u/tok>, <mailto:u@acme.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    fields.update(changes)
    return Email(**fields)


def _parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, message_from_bytes(data, policy=policy.default))


def test_the_server_receives_a_correct_multipart_message() -> None:
    with servers.smtp_server() as (handler, port):
        # Given an SMTP channel and an email with non-ASCII names and subject
        channel = SmtpChannel("127.0.0.1", port, starttls=False, clock=SimulatedClock(NOW))
        # When it is sent
        (result,) = channel.send([Outgoing("outbox-42", _email())])
        channel.close()
    # Then the server received one message that the standard parser reads back exactly
    assert result == Sent(message_id("outbox-42", "acme.test"))
    (received,) = handler.received
    assert received.sender == "hi@acme.test" and received.recipients == ["zoe@example.com"]
    msg = _parse(received.data)
    assert msg["From"] == "Acme Café <hi@acme.test>"
    assert msg["To"] == "Zoë Müller <zoe@example.com>"
    assert msg["Subject"] == "Grüße — your cart misses you 🛒"
    assert msg["Reply-To"] == "Support <help@acme.test>"
    assert msg["Message-ID"] == message_id("outbox-42", "acme.test")
    assert msg["Date"].datetime == NOW
    assert msg["List-Unsubscribe"] == "<https://n.acme.test/u/tok>, <mailto:u@acme.test>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    # (the parser keeps the CRLF line ends of the wire format in the decoded text)
    assert text.get_content().replace("\r\n", "\n").startswith("Hallo Zoë,\n\nlorem ipsum")
    assert "Hallo Zoë" in html.get_content()
    assert html.get_content().count("Still thinking it over?") == 1  # the preheader, once
    # And every line is CRLF-terminated and within the 998-character limit
    raw = received.data
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()


def test_one_connection_serves_many_batches() -> None:
    with servers.smtp_server() as (handler, port):
        # Given a channel that already sent a batch
        channel = SmtpChannel("127.0.0.1", port, starttls=False)
        first = channel.send([Outgoing(f"k{i}", _email(f"a{i}@example.com")) for i in range(3)])
        # When it sends another batch
        second = channel.send([Outgoing(f"m{i}", _email(f"b{i}@example.com")) for i in range(3)])
        channel.close()
    # Then all six went over one connection
    assert all(isinstance(r, Sent) for r in first + second)
    assert len(handler.received) == 6
    assert handler.connections == 1


def test_a_pool_sends_in_parallel_and_keeps_the_order() -> None:
    with servers.smtp_server() as (handler, port):
        # Given a channel with three connections
        channel = SmtpChannel("127.0.0.1", port, starttls=False, pool_size=3)
        batch = [Outgoing(f"k{i}", _email(f"p{i}@example.com")) for i in range(9)]
        # When a batch of nine is sent
        results = channel.send(batch)
        channel.close()
    # Then each answer belongs to its own message, over at most three connections (a share
    # that finishes first may hand its connection to the next)
    assert results == [Sent(message_id(f"k{i}", "acme.test")) for i in range(9)]
    assert sorted(r.recipients[0] for r in handler.received) == [
        f"p{i}@example.com" for i in range(9)
    ]
    assert 1 <= handler.connections <= 3


def test_a_dropped_connection_retries_the_rest_and_reconnects() -> None:
    with servers.smtp_server() as (handler, port):
        # Given a server that drops the connection at the second message of a batch
        channel = SmtpChannel("127.0.0.1", port, starttls=False, timeout=2)
        batch = [
            Outgoing("k1", _email("one@example.com")),
            Outgoing("k2", _email("drop@example.com")),
            Outgoing("k3", _email("three@example.com")),
        ]
        # When the batch is sent, and then another
        results = channel.send(batch)
        later = channel.send([Outgoing("k4", _email("four@example.com"))])
        channel.close()
    # Then the first was sent, the rest are retried, and the next batch reconnected
    assert isinstance(results[0], Sent)
    assert isinstance(results[1], Retry) and isinstance(results[2], Retry)
    assert later == [Sent(message_id("k4", "acme.test"))]
    assert handler.connections == 2


def test_a_refused_connection_is_retried() -> None:
    # Given nothing listening on the port
    channel = SmtpChannel("127.0.0.1", servers.free_port(), starttls=False, timeout=1)
    # When a batch is sent
    results = channel.send([Outgoing("k1", _email()), Outgoing("k2", _email())])
    # Then every message is retried later
    assert all(isinstance(r, Retry) for r in results)
    assert "failed" in results[0].error  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("code", "text", "kind", "bounce", "throttled"),
    [
        (550, "5.1.1 <x@y>: no such user", Failed, True, False),
        (550, "5.7.1 message rejected as spam", Failed, False, False),
        (550, "mailbox unavailable", Failed, True, False),
        (551, "user not local", Failed, True, False),
        (553, "mailbox name not allowed", Failed, True, False),
        (552, "5.2.2 mailbox full", Failed, False, False),
        (554, "5.7.1 rejected by policy", Failed, False, False),
        (554, "transaction failed", Failed, False, False),
        (554, "5.1.1 recipient address rejected", Failed, True, False),
        (550, "5.2.1 mailbox disabled", Failed, True, False),
        (451, "4.3.0 try again later", Retry, False, False),
        (451, "4.7.1 rate limited", Retry, False, True),
        (421, "4.4.2 closing connection", Retry, False, True),
    ],
)
def test_replies_are_classified(
    code: int, text: str, kind: type, bounce: bool, throttled: bool
) -> None:
    # Given an SMTP reply refusing a message
    # When it is classified
    result = classify_reply(code, text.encode())
    # Then 4xx is a Retry, 5xx a Failed, a bounce only when the recipient is at fault
    assert isinstance(result, kind)
    if isinstance(result, Failed):
        assert result.bounce is bounce and result.code == f"smtp_{code}"
        assert text in result.error
    else:
        assert isinstance(result, Retry) and result.throttled is throttled


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _authenticator(
    server: object, session: object, envelope: object, mechanism: str, auth_data: object
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_starttls_and_auth(tmp_path: Path, password: str) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with servers.smtp_server(
        tls_context=server_context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    ) as (handler, port):
        # Given a server that requires STARTTLS and AUTH, trusted through its certificate
        channel = SmtpChannel(
            "127.0.0.1",
            port,
            starttls=True,
            username="mailer",
            password=password,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        # When a message is sent
        (result,) = channel.send([Outgoing("k1", _email())])
        channel.close()
    if password == "s3cret":
        # Then it went over TLS as the logged-in user
        assert isinstance(result, Sent)
        assert [r.login for r in handler.received] == ["mailer"]
    else:
        # Then a refused login keeps the message for later, saying why
        assert isinstance(result, Retry) and "refused" in result.error
        assert handler.received == []


def test_implicit_tls(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with servers.smtp_server(ssl_context=server_context) as (handler, port):
        # Given a server that speaks TLS from the first byte (like port 465)
        channel = SmtpChannel(
            "127.0.0.1", port, tls=True, ssl_context=ssl.create_default_context(cafile=str(cert))
        )
        # When a message is sent
        (result,) = channel.send([Outgoing("k1", _email())])
        channel.close()
    # Then it arrived
    assert isinstance(result, Sent)
    assert len(handler.received) == 1


def test_a_connection_closed_while_idle_is_replaced_without_losing_the_message() -> None:
    port = servers.free_port()
    channel = SmtpChannel("127.0.0.1", port, starttls=False, timeout=2)
    # Given a pooled connection whose server restarted while it sat idle
    with servers.smtp_server_on(port) as first:
        assert channel.send([Outgoing("k1", _email("a@example.com"))]) == [
            Sent(message_id("k1", "acme.test"))
        ]
    with servers.smtp_server_on(port) as second:
        # When the next batch is sent
        results = channel.send([Outgoing("k2", _email("b@example.com"))])
        channel.close()
    # Then it went out on a new connection instead of being retried
    assert results == [Sent(message_id("k2", "acme.test"))]
    assert len(first.received) == 1 and len(second.received) == 1
