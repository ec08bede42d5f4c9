"""One contract for every channel adapter, each against its local provider stand-in
(tests/channels/servers.py): what a good message, a resend, a rejection, throttling, an
outage and a timeout come back as, and that one bad message never fails the others."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.channels import servers

from nurture.channels.base import (
    Channel,
    Content,
    Email,
    Failed,
    Hook,
    Outgoing,
    Push,
    PushSubscription,
    Retry,
    Sent,
    Sms,
    Voice,
)
from nurture.channels.files import FileChannel
from nurture.channels.memory import MemoryChannel
from nurture.channels.postmark import PostmarkChannel
from nurture.channels.sendgrid import SendgridChannel
from nurture.channels.ses import SesChannel
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.channels.webhook import WebhookChannel
from nurture.channels.webpush import WebPushChannel, generate_vapid_key
from nurture.clock import SimulatedClock

TIMEOUT = 0.4
ADAPTERS = ["smtp", "ses", "sendgrid", "postmark", "twilio-sms", "twilio-voice", "webpush",
            "webhook", "files", "memory"]  # fmt: skip
_n = itertools.count(1)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def browser_keys() -> tuple[ec.EllipticCurvePrivateKey, str, str]:
    """A browser's push keys: (private key, p256dh, auth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, _b64(public), _b64(b"0123456789abcdef")


@dataclass
class Harness:
    channel: Channel
    content: Callable[[str], Content]  # a behaviour name -> a message to a fresh recipient
    seen: Callable[[str], list[str]]  # what the provider saw for a recipient (its marker)
    bounce: bool = True  # whether the stand-in's rejection is about the address
    after: float | None = 7.0  # the Retry-After the stand-in sends when throttling
    script: Callable[[str, str], None] = lambda address, what: None
    cannot: set[str] = field(default_factory=set)


def _email(what: str) -> Email:
    return Email(
        to=f"{what}{next(_n)}@example.com",
        to_name="Zoë Example",
        from_address="Acme <hi@acme.test>",
        subject="Your cart",
        html="<p>Hello</p>",
        text="Hello",
        headers={"List-Unsubscribe": "<https://n.test/u/x>"},
    )


def _address(content: Content) -> str:
    match content:
        case Email() | Sms() | Voice():
            return content.to
        case Push():
            return content.subscription.endpoint
        case Hook():
            return content.url
    raise AssertionError(content)


def _phone(what: str) -> str:
    reverse = {v: k for k, v in servers.PHONES.items()}
    return reverse.get(what) or f"+1415555{next(_n):04d}"


@pytest.fixture
def http_server() -> Iterator[servers._Server]:
    with servers.providers() as server:
        yield server


def _http_seen(server: servers._Server, *, body: bool = False) -> Callable[[str], list[str]]:
    def seen(address: str) -> list[str]:
        found = []
        for r in server.requests:
            if r.recipient == address or r.path.endswith(address.rsplit("/", 1)[-1]):
                found.append(r.body.decode() if body else (r.marker or ""))
        return found

    return seen


@pytest.fixture(params=ADAPTERS)
def harness(
    request: pytest.FixtureRequest, http_server: servers._Server, tmp_path: Path
) -> Iterator[Harness]:
    name = request.param
    clock = SimulatedClock()
    base = http_server.base
    if name == "smtp":
        with servers.smtp_server() as (handler, port):
            channel = SmtpChannel("127.0.0.1", port, starttls=False, timeout=TIMEOUT, clock=clock)

            def smtp_seen(address: str) -> list[str]:
                return [
                    str(message_from_bytes(r.data, policy=policy.default)["Message-ID"])
                    for r in handler.received
                    if address in r.recipients
                ]

            yield Harness(channel, _email, smtp_seen, after=None)
            channel.close()
        return
    harnesses: dict[str, Callable[[], Harness]] = {
        "ses": lambda: Harness(
            SesChannel(region="eu-west-1", access_key_id="AKID", secret_access_key="secret",
                       endpoint=base, timeout=TIMEOUT, clock=clock),
            _email, _http_seen(http_server), bounce=False,
        ),
        "sendgrid": lambda: Harness(
            SendgridChannel(api_key=servers.SENDGRID_KEY, base_url=base, timeout=TIMEOUT,
                            clock=clock),
            _email, _http_seen(http_server),
        ),
        "postmark": lambda: Harness(
            PostmarkChannel(server_token=servers.POSTMARK_TOKEN, base_url=base,
                            timeout=TIMEOUT, clock=clock),
            _email, _http_seen(http_server),
        ),
        "twilio-sms": lambda: Harness(
            TwilioChannel(account_sid=servers.TWILIO_SID, auth_token="twilio-token",
                          from_number="+14155550000", base_url=base, timeout=TIMEOUT,
                          clock=clock),
            lambda what: Sms(to=_phone(what), body="Your code is 1234"),
            # Twilio documents no idempotency key: a resend is the same request, byte for byte.
            _http_seen(http_server, body=True),
        ),
        "twilio-voice": lambda: Harness(
            TwilioChannel(account_sid=servers.TWILIO_SID, auth_token="twilio-token",
                          from_number="+14155550000", base_url=base, timeout=TIMEOUT,
                          clock=clock),
            lambda what: Voice(to=_phone(what), text="Your code is 1 2 3 4"),
            _http_seen(http_server, body=True),
        ),
        "webpush": lambda: Harness(
            WebPushChannel(vapid_private_key=generate_vapid_key()[0],
                           subject="mailto:ops@acme.test", timeout=TIMEOUT, clock=clock),
            lambda what: Push(
                PushSubscription(f"{base}/push/{what}{next(_n)}", *browser_keys()[1:]),
                title="Hi", body="Back in stock", url="https://acme.test/p/1",
            ),
            _http_seen(http_server),
        ),
        "webhook": lambda: Harness(
            WebhookChannel(secret="whsec", timeout=TIMEOUT, clock=clock),
            lambda what: Hook(f"{base}/hook/{what}{next(_n)}", {"event": "cart"}),
            _http_seen(http_server), bounce=False,
        ),
    }  # fmt: skip
    if name in harnesses:
        h = harnesses[name]()
        yield h
        h.channel.close()
        return
    if name == "files":
        channel = FileChannel(tmp_path / "outbox", clock=clock)

        def file_seen(address: str) -> list[str]:
            return [p.name for p in (tmp_path / "outbox").glob("*.eml") if address in p.read_text()]

        def files_script(address: str, what: str) -> None:
            blocker = tmp_path / "not-a-folder"
            blocker.write_text("")
            channel.directory = (
                blocker / "outbox" if what in ("boom", "slow") else tmp_path / "outbox"
            )

        yield Harness(channel, _email, file_seen, script=files_script,
                      cannot={"bad", "throttle"})  # fmt: skip
        return
    assert name == "memory"
    memory = MemoryChannel()
    answers: dict[str, Retry | Failed] = {
        "bad": Failed("no such user", "memory_bad", bounce=True),
        "throttle": Retry("slow down", after=7.0, throttled=True),
        "boom": Retry("provider down"),
        "slow": Retry("timed out"),
    }

    def memory_script(address: str, what: str) -> None:
        if what in answers:
            memory.fail_address(address, answers[what])

    yield Harness(memory, _email, lambda a: [o.key for o in memory.sent_to(a)],
                  script=memory_script)  # fmt: skip


def _send(h: Harness, what: str, key: str | None = None) -> tuple[Outgoing, object]:
    content = h.content(what)
    if what in h.cannot:
        pytest.skip(f"{h.channel.provider} has no provider that could answer {what!r}")
    h.script(_address(content), what)
    item = Outgoing(key or f"outbox-{next(_n)}", content, {"outbox": "1"})
    (result,) = h.channel.send([item])
    return item, result


def test_a_good_message_is_sent_with_a_provider_id(harness: Harness) -> None:
    # Given a message to a good recipient
    # When it is sent
    item, result = _send(harness, "good")
    # Then the provider accepted it and named it
    assert isinstance(result, Sent), result
    assert result.provider_id
    assert harness.seen(_address(item.content))


def test_a_resend_carries_the_same_idempotency_key(harness: Harness) -> None:
    # Given a message that was sent once
    item, first = _send(harness, "good", key="outbox-resend-1")
    # When the same outbox message is sent again (a crash before its send was recorded)
    (second,) = harness.channel.send([item])
    # Then the provider saw the same key (Message-ID, Topic, Idempotency-Key) both times
    assert isinstance(first, Sent) and isinstance(second, Sent)
    markers = harness.seen(_address(item.content))
    assert markers and "" not in markers
    assert len(set(markers)) == 1, markers


def test_a_permanent_rejection_fails_with_the_reason(harness: Harness) -> None:
    # Given a recipient the provider rejects for good
    # When a message is sent to it
    _item, result = _send(harness, "bad")
    # Then it failed with the provider's reason, a bounce where the address is at fault
    assert isinstance(result, Failed), result
    assert result.error and result.code
    assert result.bounce is harness.bounce


def test_throttling_asks_to_retry_later_and_slower(harness: Harness) -> None:
    # Given a provider that says "too many requests"
    # When a message is sent
    _item, result = _send(harness, "throttle")
    # Then it is a Retry marked throttled, after the provider's Retry-After where given
    assert isinstance(result, Retry), result
    assert result.throttled
    assert result.after == harness.after


def test_a_provider_outage_is_retried(harness: Harness) -> None:
    # Given a provider that answers with a server error
    # When a message is sent
    _item, result = _send(harness, "boom")
    # Then it is retried later, not failed
    assert isinstance(result, Retry), result
    assert not result.throttled


def test_a_timeout_is_retried(harness: Harness) -> None:
    # Given a provider that does not answer in time
    # When a message is sent
    _item, result = _send(harness, "slow")
    # Then it is retried later
    assert isinstance(result, Retry), result


def test_one_bad_message_does_not_fail_the_others(harness: Harness) -> None:
    # Given a batch with a rejected message between two good ones
    if "bad" in harness.cannot:
        pytest.skip(f"{harness.channel.provider} has no provider that could reject one")
    contents = [harness.content("good"), harness.content("bad"), harness.content("good")]
    harness.script(_address(contents[1]), "bad")
    batch = [Outgoing(f"outbox-{next(_n)}", c) for c in contents]
    # When the batch is sent
    results = harness.channel.send(batch)
    # Then only the bad one failed, and the answers are in the batch's order
    assert [type(r) for r in results] == [Sent, Failed, Sent], results
