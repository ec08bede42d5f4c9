"""Settings: the only reader of environment variables and config files.

Precedence, highest first: explicit keyword arguments, `NURTURE_*` environment
variables, the YAML file (`NURTURE_CONFIG`, or `nurture.yaml` in the working
directory when it exists), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from nurture.analytics.clv_config import ClvConfig  # clv setting (issue 6, H4)
from nurture.channels.config import ChannelsConfig
from nurture.errors import ConfigError
from nurture.messages.policy_config import PolicyConfig
from nurture.messages.preferences import PreferencesConfig
from nurture.messages.providers import FeedbackConfig
from nurture.messages.tracking import TrackingConfig

ENV_PREFIX = "NURTURE_"
DEFAULT_CONFIG_FILE = "nurture.yaml"


def _config_file() -> Path | None:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", path=f"{ENV_PREFIX}CONFIG")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Everything an operator can set. Each field is documented in docs/settings.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: str = Field(
        "sqlite:///nurture.db",
        description="SQLAlchemy URL: sqlite:///path.db (default) or postgresql://user@host/db",
    )
    host: str = Field("127.0.0.1", description="Address `nurture serve` listens on")
    port: int = Field(8000, ge=1, le=65535, description="Port `nurture serve` listens on")
    api_processes: int = Field(
        1, ge=1, le=64, description="HTTP worker processes for `nurture serve` (PostgreSQL)"
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite fsync policy: FULL survives power loss; NORMAL only process crashes",
    )
    max_message_bytes: int = Field(32 * 1024, ge=1024, description="Largest single message")
    max_request_bytes: int = Field(500 * 1024, ge=1024, description="Largest request body")
    rejected_keep_bytes: int = Field(
        5 * 1024 * 1024,
        ge=0,
        description="Oversized requests up to this size are still kept raw for inspection",
    )
    ingest_group_max_messages: int = Field(
        5000, ge=1, description="Most messages an ingest writer commits in one transaction"
    )
    ingest_concurrency: int = Field(
        64,
        ge=1,
        le=4096,
        description="Ingest requests one server process reads, parses and stores at once; "
        "others wait up to 5 s, then get 503 with Retry-After (bounds the memory of bodies)",
    )
    default_phone_region: str | None = Field(
        None, description="ISO country used to read phone numbers without a country code"
    )
    project_dir: Path = Field(
        Path("."),
        description="Project folder holding segments/, traits/, lifecycle/ and scoring/ YAML files",
    )
    evaluate_in_process: bool = Field(
        True, description="`nurture serve` keeps segments, stages and scores current itself"
    )
    evaluation_refresh_seconds: int = Field(
        600,
        ge=0,
        description="How often every segment, stage and score is re-evaluated for conditions "
        "that change with time alone (0: never)",
    )
    evaluation_batch: int = Field(
        500, ge=1, description="Most contacts evaluated in one transaction after their events"
    )
    evaluation_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="Segments a population run evaluates at once (0: one per CPU core, at most 4)",
    )
    evaluate_at_ingest: int = Field(
        200,
        ge=0,
        description="Most contacts an ingest transaction evaluates itself, so that their "
        "memberships commit with their events; larger groups go to the evaluator (0: never)",
    )
    default_timezone: str = Field(
        "UTC",
        description="IANA timezone for contacts without one (local-time waits and triggers)",
    )
    journeys_in_process: bool = Field(
        True, description="`nurture serve` runs journey steps itself (a journey worker thread)"
    )
    journey_batch: int = Field(
        500, ge=1, description="Most enrolments a journey worker runs a step for in one transaction"
    )
    journey_step_attempts: int = Field(
        5,
        ge=1,
        le=50,
        description="Tries of a failing journey step before its enrolment is parked as failed "
        "(webhook steps use their own `retries`)",
    )
    dispatch_in_process: bool = Field(
        True,
        description="Run a dispatcher thread in `nurture serve` (sends the outbox); turn it "
        "off where `nurture worker` processes send",
    )
    dispatch_batch: int = Field(
        200, ge=1, le=10_000, description="Messages a dispatcher claims per round"
    )
    dispatch_attempts: int = Field(
        8,
        ge=1,
        le=50,
        description="Deliveries tried on transient provider errors before a message fails",
    )
    rollups_in_process: bool = Field(
        True,
        description="`nurture serve` keeps the journey report's rollups current (a thread); "
        "turn it off where `nurture worker` processes do",
    )
    rollup_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often the rollups of the journey report are brought up to date "
        "(reports stay exact between refreshes; they only count more rows)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    secret_key: SecretStr | None = Field(
        None,
        description="Secret for signed links (tracking, unsubscribe, preferences, opt-in); "
        "without it, a random secret kept in the database is used",
    )
    public_url: str | None = Field(
        None,
        description="Base URL where contacts reach this server (links in messages, provider "
        "webhooks), e.g. https://nurture.example.com; default http://host:port",
    )
    policy: PolicyConfig = Field(
        PolicyConfig(),
        description="Send-time policy: consent by country, quiet hours, frequency caps, "
        "local send time, double opt-in (docs/policy.md)",
    )

    channels: ChannelsConfig = Field(
        ChannelsConfig(),
        description="Which provider delivers email, sms, voice, push and webhook messages "
        "(docs/channels.md); by default each is written to files in ./outbox",
    )
    tracking: TrackingConfig | None = Field(
        None,
        description="Open pixel, click tracking, UTM defaults and the List-Unsubscribe mailto "
        "(docs/tracking.md); none: opens and clicks tracked, no UTM",
    )
    preferences: PreferencesConfig | None = Field(
        None,
        description="Topics the preference centre offers, per channel (docs/tracking.md); "
        "none: one 'all marketing' choice",
    )
    feedback: FeedbackConfig | None = Field(
        None,
        description="What verifies provider webhooks: SNS topics, SendGrid key, Postmark and "
        "Twilio credentials by env-var name (docs/tracking.md)",
    )
    # -- clv (customer lifetime value, docs/analytics/clv.md) --------------------------
    clv: ClvConfig | None = Field(
        None,
        description="Customer lifetime value: the purchase event, the revenue property, the "
        "time unit, the horizon and the calibration end (docs/analytics/clv.md); none: "
        "Order Completed, revenue, weeks, 365d, up to now",
    )
    # -- end clv --------------------------------------------------------------------------

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA timezone name: {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception as exc:  # SQLAlchemy raises ArgumentError with a plain message
            raise ValueError(f"not a database URL: {exc}") from None
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"backend {backend!r} is not supported; use sqlite or postgresql")
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) != 2 or not value.isalpha():
            raise ValueError("expected a two-letter ISO country code like US or DE")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def base_url(self) -> str:
        """Where links in messages point: `public_url`, else this server's address."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets replaced by `***`."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(value)
            elif name == "database_url":
                url = make_url(value)
                value = url.render_as_string(hide_password=True)
            out[name] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, turning the first problem into a ConfigError
    that names the setting as the operator writes it."""
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            if err["type"] == "extra_forbidden":
                known = ", ".join(Settings.model_fields)
                problems.append(f"unknown setting {field!r} in the config file; known: {known}")
            else:
                problems.append(f"{ENV_PREFIX}{field.upper()} ({field}): {err['msg']}")
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConfigError("invalid settings: " + "; ".join(problems), path=path) from None
    except ConfigError:
        raise
    except Exception as exc:  # a broken YAML file
        raise ConfigError(f"cannot read settings: {exc}", path="NURTURE_CONFIG") from None


def secret(name: str) -> str | None:
    """A credential named by a definition (a webhook's `secret_env`), from the environment:
    definitions kept in git name secrets, they never hold them."""
    return os.environ.get(name) or None
