"""The `channels` setting: defaults, validation, secrets from the environment, building."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nurture.channels.config import ChannelsConfig, build_channels
from nurture.channels.files import FileChannel
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.channels.webpush import WebPushChannel, generate_vapid_key
from nurture.errors import ConfigError

CONFIG = {
    "email": {"provider": "smtp", "host": "mail.internal", "port": 2525, "username": "u",
              "password_env": "SMTP_PASSWORD", "from": "Acme <hi@acme.test>",
              "rate_per_second": 50},
    "sms": {"provider": "twilio", "account_sid": "AC1", "auth_token_env": "TW", "from": "+1415"},
    "voice": {"provider": "twilio", "account_sid": "AC1", "auth_token_env": "TW", "from": "+1415"},
    "push": {"provider": "webpush", "vapid_private_key_env": "VAPID", "subject": "mailto:o@a.t"},
}  # fmt: skip


def test_every_channel_defaults_to_the_file_outbox(tmp_path: Path) -> None:
    # Given no channel settings
    config = ChannelsConfig()
    # When the channels are built
    built = build_channels(config, secret=lambda name: None)
    # Then one file outbox in ./outbox serves all five
    assert set(built) == {"email", "sms", "voice", "push", "webhook"}
    assert len({id(c) for c in built.values()}) == 1
    channel = built["email"]
    assert isinstance(channel, FileChannel) and channel.directory == Path("outbox")
    assert str(config) == "email=file sms=file voice=file push=file webhook=file"


def test_providers_are_built_with_secrets_from_the_environment() -> None:
    # Given providers whose secrets are named by environment variable
    config = ChannelsConfig.model_validate(CONFIG)
    secrets = {"SMTP_PASSWORD": "pw", "TW": "token", "VAPID": generate_vapid_key()[0]}
    # When the channels are built
    built = build_channels(config, secret=secrets.get)
    # Then each provider got its secret, and SMS and voice share one Twilio adapter
    email = built["email"]
    assert isinstance(email, SmtpChannel) and email.password == "pw" and email.port == 2525
    assert isinstance(built["sms"], TwilioChannel) and built["sms"] is built["voice"]
    assert isinstance(built["push"], WebPushChannel)
    assert config.email_from == "Acme <hi@acme.test>" and config.sms_from == "+1415"
    assert config.rates() == {"smtp": 50.0, "twilio": None, "webpush": None, "file": None}


def test_a_missing_secret_names_the_setting() -> None:
    # Given SMTP with a password variable that is not set
    config = ChannelsConfig.model_validate(CONFIG)
    # When the channels are built, then the error names the setting to fix
    with pytest.raises(ConfigError) as caught:
        build_channels(config, secret={"TW": "t"}.get)
    assert caught.value.path == "channels.email.password_env"
    assert "SMTP_PASSWORD" in caught.value.message


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"email": {"provider": "twilio", "account_sid": "x"}}, "email"),
        ({"email": {"provider": "smtp", "hots": "x"}}, "hots"),
        ({"push": {"provider": "webpush", "subject": "ops@acme.test"}}, "subject"),
        ({"fax": {"provider": "file"}}, "fax"),
    ],
)
def test_mistakes_are_refused(document: dict[str, object], where: str) -> None:
    # Given a channel setting with a mistake
    # When it is validated, then it is refused, pointing at the mistake
    with pytest.raises(ValidationError) as caught:
        ChannelsConfig.model_validate(document)
    assert where in str(caught.value)
