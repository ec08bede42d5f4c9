"""A template's definition: what it says per channel, its locale variants, the traits it
reads and its defaults; parsed with pydantic and checked strictly (every field compiles,
every variable is one templates can see).

    name: Welcome
    locale: en              # the language of the default body
    currency: EUR           # for `money` without a currency
    traits: [plan]          # contact traits beyond the standard ones it reads
    defaults: {first_name: there}
    email: {subject: ..., preheader: ..., html: ... | mjml: ..., text: ...}
    sms: {body: ..., max_segments: 2}
    push: {title: ..., body: ..., url: ..., icon: ...}
    voice: {text: ...}
    locales:
      pt-BR: {email: {subject: ...}}   # any field; the rest comes from `pt`, then default
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pydantic
from babel.numbers import list_currencies
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nurture.conditions.model import validation_error
from nurture.errors import ValidationError
from nurture.messages.content import compile_mjml
from nurture.messages.render import TEXT, TemplateProblem, babel_locale, compile_liquid

Channel = Literal["email", "sms", "push", "voice"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "voice")
ROOTS = ("contact", "event", "journey", "links")
# Contact columns (normalised at ingest); every other name under `contact` is a trait.
CONTACT_FIELDS = frozenset(
    ("id", "user_id", "email", "phone", "country", "timezone", "locale", "created_at")
) | {"first_seen_at", "last_seen_at", "traits", "computed"}
# Segment's reserved identify traits: a template may read them without declaring them.
STANDARD_TRAITS = frozenset(
    ("first_name", "last_name", "name", "title", "company", "username", "website", "avatar")
) | {"address", "age", "birthday", "gender", "description", "firstName", "lastName", "createdAt"}
EVENT_FIELDS = frozenset(("name", "type", "timestamp", "message_id", "properties"))
JOURNEY_FIELDS = frozenset(("key", "version", "step", "enrolment"))
# What tracking puts under `links` (messages/tracking.py `Tracker.links`).
# `confirm`: the double opt-in link, in the confirmation message only (docs/policy.md).
LINK_NAMES = frozenset(("unsubscribe", "preferences", "confirm"))
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_LOCALE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")


def normalize_locale(tag: str | None) -> str | None:
    """`pt_br` → `pt-BR`, `zh-hant-tw` → `zh-Hant-TW`; None for what is not a locale."""
    match = _LOCALE.match(tag.strip()) if isinstance(tag, str) else None
    if match is None:
        return None
    language, script, region = match.groups()
    parts = [
        language.lower(),
        script.title() if script else None,
        region.upper() if region else None,
    ]
    return "-".join(p for p in parts if p)


def fallback_chain(tag: str | None) -> list[str]:
    """`pt-BR` → [`pt-BR`, `pt`]: the locale, then each less specific one."""
    normal = normalize_locale(tag)
    if normal is None:
        return []
    parts = normal.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailPart(_Part):
    subject: str | None = None
    preheader: str | None = None
    html: str | None = None
    mjml: str | None = None
    text: str | None = None  # written by the author; else derived from the HTML

    @model_validator(mode="after")
    def _one_body(self) -> EmailPart:
        if self.html is not None and self.mjml is not None:
            raise ValueError("give the body as html or as mjml, not both")
        return self


class SmsPart(_Part):
    body: str | None = None
    max_segments: int | None = Field(None, ge=1, le=20)


class PushPart(_Part):
    title: str | None = None
    body: str | None = None
    url: str | None = None
    icon: str | None = None


class VoicePart(_Part):
    text: str | None = None


Part = EmailPart | SmsPart | PushPart | VoicePart
# What each channel must say once the locale chain is resolved.
REQUIRED = {"email": ("subject",), "sms": ("body",), "push": ("title", "body"), "voice": ("text",)}


class Variant(_Part):
    email: EmailPart | None = None
    sms: SmsPart | None = None
    push: PushPart | None = None
    voice: VoicePart | None = None

    def part(self, channel: str) -> Part | None:
        part: Part | None = getattr(self, channel, None)
        return part


class TemplateDefinition(Variant):
    name: str = ""
    description: str = ""
    locale: str = "en"
    currency: str | None = None
    traits: list[str] = Field(default_factory=list)
    defaults: dict[str, str | int | float | bool] = Field(default_factory=dict)
    locales: dict[str, Variant] = Field(default_factory=dict)

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        normal = normalize_locale(value)
        if normal is None or babel_locale(normal) is None:
            raise ValueError(f"unknown locale {value!r}; expected a tag like en, de-DE or pt-BR")
        return normal

    @field_validator("locales")
    @classmethod
    def _locale_keys(cls, value: dict[str, Variant]) -> dict[str, Variant]:
        out: dict[str, Variant] = {}
        for key, variant in value.items():
            normal = normalize_locale(key)
            if normal is None or babel_locale(normal) is None:
                raise ValueError(f"unknown locale {key!r}; expected a tag like de, de-DE or pt-BR")
            if normal in out:
                raise ValueError(f"locale {normal} is given twice")
            out[normal] = variant
        return out

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in list_currencies():
            raise ValueError(f"unknown currency {value!r}; expected an ISO 4217 code like EUR")
        return value.upper() if value else value

    @field_validator("traits")
    @classmethod
    def _trait_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not a trait name")
        return value

    @field_validator("defaults")
    @classmethod
    def _default_paths(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {}
        for key, default in value.items():
            path = default_path(key)
            if not all(_NAME.match(part) for part in path.split(".")):
                raise ValueError(f"{key!r} is not a variable path like first_name or event.x")
            out[path] = default
        return out

    def variants(self) -> dict[str, Variant]:
        """Every variant by locale; the default under ''."""
        return {"": self, **self.locales}


def default_path(key: str) -> str:
    """A default's variable: `first_name` is short for `contact.first_name`."""
    return key if key.split(".")[0] in ROOTS else f"contact.{key}"


def parse_template(data: Any, *, path: str = "") -> TemplateDefinition:
    """Validate a template's shape; raises ValidationError naming the bad field."""
    if not isinstance(data, dict):
        raise ValidationError(
            "expected a mapping with email, sms, push or voice", path=path or None
        )
    try:
        definition = TemplateDefinition.model_validate(data)
    except pydantic.ValidationError as exc:
        error = validation_error(exc, path)
        raise ValidationError(error.message, path=error.path, code="invalid_template") from None
    if not any(definition.part(c) is not None for c in CHANNELS):
        raise ValidationError(
            "a template needs at least one of email, sms, push or voice",
            path=path or None,
            code="invalid_template",
        )
    return definition


def check(
    definition: TemplateDefinition, *, computed: set[str] | None = None, path: str = ""
) -> list[TemplateProblem]:
    """Every problem: fields that do not compile, unknown variables and filters, channels a
    locale overrides that the default lacks, required fields missing. `computed` is the
    declared computed traits (None: not checked)."""
    problems: list[TemplateProblem] = []
    prefix = f"{path}." if path else ""
    traits = set(definition.traits) | {
        p.split(".")[1] for p in definition.defaults if p.startswith("contact.")
    }
    for locale, variant in definition.variants().items():
        where = f"{prefix}locales.{locale}." if locale else prefix
        for channel in CHANNELS:
            part = variant.part(channel)
            if part is None:
                continue
            if locale and definition.part(channel) is None:
                problems.append(
                    TemplateProblem(
                        f"the default has no {channel} part for this locale to override",
                        path=f"{where}{channel}",
                        code="invalid_template",
                    )
                )
            for field, source in part.model_dump().items():
                if isinstance(source, str):
                    field_path = f"{where}{channel}.{field}"
                    problems += _check_field(source, field_path, traits, computed)
        if not locale:
            for channel in CHANNELS:
                part = variant.part(channel)
                for field in REQUIRED[channel] if part is not None else ():
                    if getattr(part, field) is None:
                        problems.append(
                            TemplateProblem(
                                "required",
                                path=f"{where}{channel}.{field}",
                                code="invalid_template",
                            )
                        )
                if isinstance(part, EmailPart) and part.html is None and part.mjml is None:
                    problems.append(
                        TemplateProblem(
                            "an email needs a body: html or mjml",
                            path=f"{where}email.html",
                            code="invalid_template",
                        )
                    )
    return problems


def _check_field(
    source: str, path: str, traits: set[str], computed: set[str] | None
) -> list[TemplateProblem]:
    if path.endswith(".mjml"):
        try:
            compile_mjml(source)
        except ValueError as exc:
            return [TemplateProblem(f"MJML: {exc}", path=path, code="invalid_mjml")]
    try:
        template = compile_liquid(source, path)
    except TemplateProblem as problem:
        return [problem]
    analysis = template.analyze()
    problems: list[TemplateProblem] = []
    for name, spans in analysis.filters.items():
        if name not in TEXT.filters:
            line, column = spans[0].line_col(source)
            problems.append(
                TemplateProblem(
                    f"unknown filter {name!r}",
                    path=path,
                    code="unknown_filter",
                    line=line,
                    column=column + 1,
                )
            )
    for variables in analysis.globals.values():
        for variable in variables:
            why = _unknown(variable.segments, traits, computed)
            if why:
                line, column = variable.span.line_col(source)
                problems.append(
                    TemplateProblem(
                        f"unknown variable {variable}: {why}",
                        path=path,
                        code="unknown_variable",
                        line=line,
                        column=column + 1,
                    )
                )
    return problems


def _unknown(segments: list[Any], traits: set[str], computed: set[str] | None) -> str | None:
    """Why a variable is not one templates can see, or None if it is."""
    root = segments[0]
    first = segments[1] if len(segments) > 1 and isinstance(segments[1], str) else None
    second = segments[2] if len(segments) > 2 and isinstance(segments[2], str) else None
    if root not in ROOTS:
        return "templates see contact, event, journey and links"
    if first is None:
        return None
    if root == "contact":
        if first == "computed":
            if second is None or computed is None or second in computed:
                return None
            return f"no computed trait {second!r} is declared"
        trait = second if first == "traits" else first
        if trait is None or first in CONTACT_FIELDS - {"traits"} or trait in STANDARD_TRAITS:
            return None
        if trait in traits:
            return None
        return f"{trait!r} is not a standard trait; list it under `traits:` if contacts have it"
    known = {"event": EVENT_FIELDS, "journey": JOURNEY_FIELDS, "links": LINK_NAMES}[root]
    if first not in known:
        return f"{root} has " + ", ".join(sorted(known))
    return None
