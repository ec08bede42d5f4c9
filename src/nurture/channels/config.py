"""Which provider delivers which channel, and how to reach it: the `channels` setting.

Credentials are never written here: a field ending in `_env` names the environment
variable that holds the secret, read once when the channels are built. By default every
channel writes files into `./outbox/` (see files.py): nothing leaves the machine until a
real provider is configured, and what would have been sent can be read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nurture.channels.base import Channel
from nurture.channels.files import FileChannel
from nurture.channels.memory import MemoryChannel
from nurture.clock import Clock, SystemClock
from nurture.errors import ConfigError

SecretReader = Callable[[str], str | None]


def environment_secret(name: str) -> str | None:
    """The default reader: `nurture.settings.secret` (settings.py reads the environment)."""
    # Imported here: settings.py imports this module for the `channels` field.
    from nurture.settings import secret

    return secret(name)


class _Provider(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    rate_per_second: float | None = Field(
        None, gt=0, description="Most messages a second (the dispatcher keeps to it)"
    )
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for the provider")


class _Sender(_Provider):
    from_: str | None = Field(None, alias="from", description='e.g. "Acme <hi@acme.test>"')
    reply_to: str | None = None


class SmtpConfig(_Sender):
    provider: Literal["smtp"]
    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    tls: bool = Field(False, description="Implicit TLS from the first byte (port 465)")
    username: str | None = None
    password_env: str | None = None
    ca_file: Path | None = Field(None, description="Trust this CA bundle instead of the system's")
    pool_size: int = Field(1, ge=1, le=64, description="Connections used in parallel")


class SesConfig(_Sender):
    provider: Literal["ses"]
    region: str
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str | None = None
    endpoint: str | None = Field(None, description="Default https://email.<region>.amazonaws.com")
    configuration_set: str | None = None


class SendgridConfig(_Sender):
    provider: Literal["sendgrid"]
    api_key_env: str = "SENDGRID_API_KEY"
    base_url: str = "https://api.sendgrid.com"


class PostmarkConfig(_Sender):
    provider: Literal["postmark"]
    server_token_env: str = "POSTMARK_SERVER_TOKEN"
    base_url: str = "https://api.postmarkapp.com"
    message_stream: str = "outbound"


class TwilioConfig(_Provider):
    provider: Literal["twilio"]
    account_sid: str
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    from_: str | None = Field(None, alias="from", description="E.164 number, e.g. +14155550100")
    messaging_service_sid: str | None = None
    status_callback: str | None = Field(None, description="URL for Twilio's delivery reports")
    base_url: str = "https://api.twilio.com"


class WebPushConfig(_Provider):
    provider: Literal["webpush"]
    vapid_private_key_env: str = "VAPID_PRIVATE_KEY"
    subject: str = Field(description="Who to contact about these pushes: mailto: or https: URL")
    ttl: int = Field(86400, ge=0, description="Seconds a push service keeps an undelivered one")
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        if not value.startswith(("mailto:", "https://")):
            raise ValueError("expected a mailto: address or an https:// URL")
        return value


class WebhookConfig(_Provider):
    provider: Literal["webhook"]
    secret_env: str | None = Field(None, description="Signing secret (Nurture-Signature)")


class FileConfig(_Sender):
    provider: Literal["file"]
    directory: Path = Path("outbox")


class MemoryConfig(_Sender):
    provider: Literal["memory"]


EmailProvider = Annotated[
    SmtpConfig | SesConfig | SendgridConfig | PostmarkConfig | FileConfig | MemoryConfig,
    Field(discriminator="provider"),
]
PhoneProvider = Annotated[TwilioConfig | FileConfig | MemoryConfig, Field(discriminator="provider")]
PushProvider = Annotated[WebPushConfig | FileConfig | MemoryConfig, Field(discriminator="provider")]
HookProvider = Annotated[WebhookConfig | FileConfig | MemoryConfig, Field(discriminator="provider")]
ProviderConfig = (
    SmtpConfig
    | SesConfig
    | SendgridConfig
    | PostmarkConfig
    | TwilioConfig
    | WebPushConfig
    | WebhookConfig
    | FileConfig
    | MemoryConfig
)

_OUTBOX = FileConfig(provider="file")


class ChannelsConfig(BaseModel):
    """One provider per channel; each defaults to the file outbox in ./outbox."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: EmailProvider = _OUTBOX
    sms: PhoneProvider = _OUTBOX
    voice: PhoneProvider = _OUTBOX
    push: PushProvider = _OUTBOX
    webhook: HookProvider = _OUTBOX

    def providers(self) -> dict[str, ProviderConfig]:
        """Each channel name and its provider's configuration."""
        return {
            "email": self.email,
            "sms": self.sms,
            "voice": self.voice,
            "push": self.push,
            "webhook": self.webhook,
        }

    def rates(self) -> dict[str, float | None]:
        """`rate_per_second` by provider name (the smallest where two channels share one)."""
        out: dict[str, float | None] = {}
        for config in self.providers().values():
            rate = config.rate_per_second
            known = out.get(config.provider)
            out[config.provider] = rate if known is None else min(known, rate or known)
        return out

    @property
    def email_from(self) -> str | None:
        """The configured default sender of email, e.g. `Acme <hi@acme.test>`."""
        return self.email.from_ if isinstance(self.email, _Sender) else None

    @property
    def reply_to(self) -> str | None:
        """The configured Reply-To of email."""
        return self.email.reply_to if isinstance(self.email, _Sender) else None

    @property
    def sms_from(self) -> str | None:
        """The configured sender number of SMS."""
        return self.sms.from_ if isinstance(self.sms, TwilioConfig) else None

    def __str__(self) -> str:
        # What `nurture config show` prints: the provider of each channel, no secrets.
        return " ".join(f"{name}={c.provider}" for name, c in self.providers().items())


def _need(read: SecretReader, name: str | None, path: str) -> str:
    value = read(name) if name else None
    if not value:
        what = f"the environment variable {name}" if name else "a secret"
        raise ConfigError(f"{what} must be set (it holds this provider's secret)", path=path)
    return value


def build_channel(
    name: str,
    config: ProviderConfig,
    *,
    secret: SecretReader = environment_secret,
    clock: Clock | None = None,
) -> Channel:
    """The adapter for one channel's configuration; raises ConfigError for a missing
    secret or a bad key."""
    clock = clock or SystemClock()
    path = f"channels.{name}"
    # Provider modules are imported when configured: botocore and pywebpush are slow to
    # import, and most installations use one or two providers.
    match config:
        case SmtpConfig():
            from nurture.channels.smtp import SmtpChannel, ssl_context

            return SmtpChannel(
                config.host,
                config.port,
                starttls=config.starttls,
                tls=config.tls,
                username=config.username,
                password=_need(secret, config.password_env, f"{path}.password_env")
                if config.password_env
                else None,
                timeout=config.timeout,
                pool_size=config.pool_size,
                ssl_context=ssl_context(config.ca_file),
                default_from=config.from_,
                clock=clock,
            )
        case SesConfig():
            from nurture.channels.ses import SesChannel

            token_env = config.session_token_env
            return SesChannel(
                region=config.region,
                access_key_id=_need(secret, config.access_key_id_env, f"{path}.access_key_id_env"),
                secret_access_key=_need(
                    secret, config.secret_access_key_env, f"{path}.secret_access_key_env"
                ),
                session_token=_need(secret, token_env, f"{path}.session_token_env")
                if token_env
                else None,
                endpoint=config.endpoint,
                configuration_set=config.configuration_set,
                default_from=config.from_,
                timeout=config.timeout,
                clock=clock,
            )
        case SendgridConfig():
            from nurture.channels.sendgrid import SendgridChannel

            return SendgridChannel(
                api_key=_need(secret, config.api_key_env, f"{path}.api_key_env"),
                base_url=config.base_url,
                default_from=config.from_,
                timeout=config.timeout,
                clock=clock,
            )
        case PostmarkConfig():
            from nurture.channels.postmark import PostmarkChannel

            return PostmarkChannel(
                server_token=_need(secret, config.server_token_env, f"{path}.server_token_env"),
                base_url=config.base_url,
                message_stream=config.message_stream,
                default_from=config.from_,
                timeout=config.timeout,
                clock=clock,
            )
        case TwilioConfig():
            from nurture.channels.twilio import TwilioChannel

            return TwilioChannel(
                account_sid=config.account_sid,
                auth_token=_need(secret, config.auth_token_env, f"{path}.auth_token_env"),
                from_number=config.from_,
                messaging_service_sid=config.messaging_service_sid,
                status_callback=config.status_callback,
                base_url=config.base_url,
                timeout=config.timeout,
                clock=clock,
            )
        case WebPushConfig():
            from nurture.channels.webpush import WebPushChannel

            key_path = f"{path}.vapid_private_key_env"
            try:
                return WebPushChannel(
                    vapid_private_key=_need(secret, config.vapid_private_key_env, key_path),
                    subject=config.subject,
                    ttl=config.ttl,
                    urgency=config.urgency,
                    timeout=config.timeout,
                    clock=clock,
                )
            except ValueError as exc:
                raise ConfigError(str(exc), path=key_path) from None
        case WebhookConfig():
            from nurture.channels.webhook import WebhookChannel

            return WebhookChannel(
                secret=_need(secret, config.secret_env, f"{path}.secret_env")
                if config.secret_env
                else None,
                timeout=config.timeout,
                clock=clock,
            )
        case FileConfig():
            return FileChannel(config.directory, default_from=config.from_, clock=clock)
        case MemoryConfig():
            return MemoryChannel(rate_per_second=config.rate_per_second)
        case _:
            assert_never(config)


def build_channels(
    config: ChannelsConfig,
    *,
    secret: SecretReader = environment_secret,
    clock: Clock | None = None,
) -> dict[str, Channel]:
    """One adapter per channel name. Channels with the same configuration share one adapter
    (a Twilio account for SMS and voice, the one file outbox), so they share its connections
    and its rate. Raises ConfigError, naming the setting, when a secret is missing."""
    built: dict[str, Channel] = {}
    by_config: dict[str, Channel] = {}
    for name, provider in config.providers().items():
        # A channel's own sender settings (from) differ per channel; the rest is shared.
        identity = provider.model_dump_json()
        if identity not in by_config:
            by_config[identity] = build_channel(name, provider, secret=secret, clock=clock)
        built[name] = by_config[identity]
    return built
