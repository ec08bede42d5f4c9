"""Reserved traits: email, phone, timezone, locale and country, read from free traits.

A bad value never fails ingest. The trait is kept exactly as given, the column
stays empty, and `trait_issues` records why, so a marketer can see and fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email

_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")
_KNOWN_ZONES = frozenset(available_timezones())


@dataclass(slots=True)
class Profile:
    email: str | None = None
    phone: str | None = None
    country: str | None = None
    timezone: str | None = None
    locale: str | None = None
    issues: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=65536)
def normalize_email(value: str) -> tuple[str | None, str | None]:
    """(normalised address, None) or (None, reason)."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, str(exc)
    return result.normalized.lower(), None


@lru_cache(maxsize=65536)
def normalize_phone(value: str, region: str | None) -> tuple[str | None, str | None]:
    """(E.164 number, None) or (None, reason); `region` reads national numbers."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        return None, f"not a phone number: {exc}"
    if not phonenumbers.is_valid_number(number):
        hint = "" if region or value.startswith("+") else " (no country code and no country)"
        return None, f"not a valid phone number{hint}"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


@lru_cache(maxsize=4096)
def normalize_timezone(value: str) -> tuple[str | None, str | None]:
    name = value.strip()
    if name not in _KNOWN_ZONES:
        return None, f"{value!r} is not an IANA time zone like Europe/Berlin"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None, f"{value!r} is not an IANA time zone like Europe/Berlin"
    return name, None


@lru_cache(maxsize=4096)
def normalize_locale(value: str) -> tuple[str | None, str | None]:
    """BCP 47 form (`pt-BR`) of a locale given as `pt_BR`, `pt-br` or `pt-BR`."""
    try:
        parsed = Locale.parse(value.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None, f"{value!r} is not a known locale like en-US or pt-BR"
    return str(parsed).replace("_", "-"), None


def _lookup(traits: dict[str, Any], *paths: str) -> tuple[str | None, Any]:
    for path in paths:
        node: Any = traits
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return path, node
    return None, None


def build_profile(
    traits: dict[str, Any],
    *,
    context: dict[str, Any] | None = None,
    default_region: str | None = None,
) -> Profile:
    """Read the reserved traits out of `traits` (with the message context as a fallback)."""
    profile = Profile()
    ctx = context or {}

    path, country = _lookup(traits, "country", "address.country")
    if country is not None:
        if isinstance(country, str) and _COUNTRY_RE.match(country):
            profile.country = country.upper()
        elif path:
            profile.issues[path] = "expected a two-letter ISO country code like US or DE"

    path, email = _lookup(traits, "email")
    if email is not None and path:
        if isinstance(email, str):
            profile.email, reason = normalize_email(email)
            if reason:
                profile.issues[path] = reason
        else:
            profile.issues[path] = "expected a string"

    path, phone = _lookup(traits, "phone")
    if phone is not None and path:
        if isinstance(phone, str | int) and not isinstance(phone, bool):
            region = profile.country or default_region
            profile.phone, reason = normalize_phone(str(phone), region)
            if reason:
                profile.issues[path] = reason
        else:
            profile.issues[path] = "expected a string"

    for name, normalizer in (("timezone", normalize_timezone), ("locale", normalize_locale)):
        path, value = _lookup(traits, name)
        source = path
        if value is None and isinstance(ctx.get(name), str):
            source, value = f"context.{name}", ctx[name]
        if value is None or source is None:
            continue
        if not isinstance(value, str):
            profile.issues[source] = "expected a string"
            continue
        normalized, reason = normalizer(value)
        setattr(profile, name, normalized)
        if reason and source == path:  # a bad context value is the SDK's, not the profile's
            profile.issues[source] = reason
    return profile
