"""docs/channels.md is true: its configuration validates and builds, its Python examples
run, and its tables name every provider the code has.

Marked blocks: `<!-- example: config -->` before a ```yaml block (a nurture.yaml with a
`channels:` key) and `<!-- example: python -->` before a ```python block (run as is).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import yaml

from nurture.channels.config import ChannelsConfig, ProviderConfig, build_channels
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.channels.webhook import WebhookChannel
from nurture.channels.webpush import WebPushChannel, generate_vapid_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "channels.md"
TEXT = DOC.read_text()


def _blocks(kind: str, language: str) -> list[str]:
    pattern = rf"<!-- example: {kind} -->\n```{language}\n(.*?)```"
    return re.findall(pattern, TEXT, re.S)


def test_the_configuration_example_validates_and_builds() -> None:
    # Given the page's nurture.yaml
    (document,) = _blocks("config", "yaml")
    config = ChannelsConfig.model_validate(yaml.safe_load(document)["channels"])
    secrets = {
        "SMTP_PASSWORD": "pw",
        "TWILIO_AUTH_TOKEN": "token",
        "VAPID_PRIVATE_KEY": generate_vapid_key()[0],
        "HOOK_SIGNING_SECRET": "whsec",
    }
    # When the channels are built with those secrets
    built = build_channels(config, secret=secrets.get)
    # Then each channel has the provider the page shows, SMS and voice sharing Twilio
    assert isinstance(built["email"], SmtpChannel) and built["email"].pool_size == 4
    assert isinstance(built["sms"], TwilioChannel) and built["sms"] is built["voice"]
    assert isinstance(built["push"], WebPushChannel)
    assert isinstance(built["webhook"], WebhookChannel) and built["webhook"].secret == "whsec"
    assert config.rates()["smtp"] == 200


@pytest.mark.parametrize("index", range(len(_blocks("python", "python"))))
def test_python_examples_run(index: int) -> None:
    # Given a Python example of the page
    source = _blocks("python", "python")[index]
    # When it runs, then its own assertions hold
    exec(compile(source, f"{DOC.name}[python {index}]", "exec"), {})


def test_every_provider_is_documented() -> None:
    # Given the providers the configuration knows
    names = {
        model.model_fields["provider"].annotation.__args__[0] for model in get_args(ProviderConfig)
    }  # type: ignore[union-attr]
    # Then each has a row in the providers' fields table
    for name in names:
        assert re.search(rf"^\| `{name}` \|", TEXT, re.M), name
