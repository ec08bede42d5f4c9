"""What the send-time policy is configured with: the `policy` setting.

Every default is the safe one: marketing needs opt-in where the law says so (and wherever
the country is unknown), SMS and voice marketing need opt-in everywhere (TCPA), and texts
and calls wait out the night. docs/policy.md explains each field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from nurture.conditions.durations import Duration, format_duration, parse_duration
from nurture.localtime import Window, parse_clock

PolicyChannel = Literal["email", "sms", "voice", "push"]
Kind = Literal["marketing", "transactional", "notification"]
ConsentMode = Literal["by_country", "opt_in", "opt_out"]

# Where marketing needs explicit consent: the EU (ePrivacy Directive, GDPR), the rest of
# the EEA, the UK (PECR), Switzerland (UWG art. 3) and Canada (CASL).
# fmt: off
EU = (
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
)
# fmt: on
OPT_IN_COUNTRIES: tuple[str, ...] = (*EU, "IS", "LI", "NO", "GB", "CH", "CA")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _clock_text(value: str) -> str:
    parsed = parse_clock(value)
    return f"{parsed.hour:02}:{parsed.minute:02}"


class QuietHours(_Model):
    """Local hours in which a channel sends nothing of the listed kinds (they wait)."""

    start: str = Field(description="Local time quiet hours begin, e.g. 21:00")
    end: str = Field(description="Local time they end, e.g. 09:00 (before start: overnight)")
    days: str | tuple[str, ...] = Field("daily", description="Days they begin on")
    kinds: tuple[Kind, ...] = Field(("marketing",), description="Kinds of message they hold")
    _window: Window | None = PrivateAttr(None)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        return _clock_text(value)

    def model_post_init(self, context: object) -> None:
        try:
            self._window = Window.parse(self.days, self.start, self.end)
        except ValueError as exc:
            raise ValueError(f"quiet hours: {exc}") from None

    @property
    def window(self) -> Window:
        assert self._window is not None
        return self._window


class Cap(_Model):
    """At most `max` messages of `kind` on `channel` per `per` to one contact."""

    channel: PolicyChannel
    max: int = Field(ge=1)
    per: Duration
    kind: Literal["marketing", "transactional"] = "marketing"
    over: Literal["delay", "skip"] = Field("delay", description="What a message over it does")


class SendTime(_Model):
    """Local time of day marketing goes out, per channel (a payload's `send_at` wins)."""

    channels: dict[PolicyChannel, str] = Field(default_factory=dict)
    grace: Duration = Field(
        parse_duration("1h"),
        description="A message queued this long after the time still goes that day",
    )

    @field_validator("channels")
    @classmethod
    def _clocks(cls, value: dict[PolicyChannel, str]) -> dict[PolicyChannel, str]:
        return {channel: _clock_text(at) for channel, at in value.items()}


def _default_quiet_hours() -> dict[PolicyChannel, QuietHours]:
    # The TCPA allows 08:00-21:00 local; an hour's margin in the morning.
    return {
        "sms": QuietHours(start="21:00", end="09:00"),
        "voice": QuietHours(start="21:00", end="09:00"),
    }


# Push: the browser's permission prompt is the person's opt-in, and leaving is one click.
_DEFAULT_MODES: dict[PolicyChannel, ConsentMode] = {
    "email": "by_country",
    "sms": "opt_in",
    "voice": "opt_in",
    "push": "opt_out",
}


class PolicyConfig(_Model):
    """The send-time policy: consent by country, quiet hours, caps, send time."""

    opt_in_countries: tuple[str, ...] = Field(
        OPT_IN_COUNTRIES, description="ISO countries where marketing needs explicit consent"
    )
    default_consent_mode: Literal["opt_in", "opt_out"] = Field(
        "opt_in", description="For contacts whose country is unknown"
    )
    consent_modes: dict[PolicyChannel, ConsentMode] = Field(
        default_factory=lambda: dict(_DEFAULT_MODES),
        description="Per channel: by_country, or opt_in / opt_out everywhere",
    )
    quiet_hours: dict[PolicyChannel, QuietHours] = Field(default_factory=_default_quiet_hours)
    caps: tuple[Cap, ...] = ()
    send_time: SendTime = Field(default_factory=SendTime)
    double_opt_in_template: str = Field(
        "confirm_subscription", min_length=1, description="Template of confirmation messages"
    )
    confirm_expires: Duration = Field(
        parse_duration("7d"), description="How long a double opt-in link stays valid"
    )

    @field_validator("consent_modes")
    @classmethod
    def _modes(cls, value: dict[PolicyChannel, ConsentMode]) -> dict[PolicyChannel, ConsentMode]:
        # Setting one channel keeps the others' defaults.
        return {**_DEFAULT_MODES, **value}

    @field_validator("opt_in_countries", mode="before")
    @classmethod
    def _norway(cls, value: object) -> object:
        # YAML 1.1 reads a bare NO as false: the one country code it mangles.
        if isinstance(value, list | tuple):
            return ["NO" if item is False else item for item in value]
        return value

    @field_validator("opt_in_countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            if len(code) != 2 or not code.isalpha():
                raise ValueError(f"{code!r} is not a two-letter ISO country code like DE")
        return tuple(sorted({code.upper() for code in value}))

    def mode(self, channel: str, country: str | None) -> Literal["opt_in", "opt_out"]:
        """Whether marketing on `channel` to a contact in `country` needs opt-in."""
        mode = self.consent_modes.get(channel, "opt_in")  # type: ignore[call-overload]
        if mode != "by_country":
            return mode  # type: ignore[no-any-return]
        if country is None:
            return self.default_consent_mode
        return "opt_in" if country.upper() in self.opt_in_countries else "opt_out"

    def __str__(self) -> str:
        # What `nurture config show` and the settings reference print: the gist.
        quiet = ", ".join(f"{c} {q.start}-{q.end}" for c, q in self.quiet_hours.items())
        caps = ", ".join(f"{c.channel} {c.max}/{format_duration(c.per)}" for c in self.caps)
        return (
            f"opt-in in {len(self.opt_in_countries)} countries; "
            f"quiet hours: {quiet or 'none'}; caps: {caps or 'none'}"
        )
