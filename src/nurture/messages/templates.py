"""Templates for the dispatcher and the doors: where they live, and rendering one for a
contact in a channel and locale.

Templates live in the `definitions` table (kind `template`: made through the admin API, or
applied from project files) and in the project folder, `templates/<key>.yaml` with the
email body in the YAML or beside it (`<key>.html`, `<key>.mjml`, `<key>.txt`, and per
locale `<key>.pt-BR.html` ...). A stored template wins over a file of the same key.

Parsing, MJML, CSS inlining and the derived text part happen once per template and locale
(cached on the `Template`); a render is Liquid plus a little string work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from liquid import BoundTemplate
from sqlalchemy import Connection

from nurture.clock import Clock
from nurture.errors import NotFound, NurtureError, ValidationError
from nurture.localtime import zone
from nurture.messages import content as c
from nurture.messages.context import clean, contact, message_context
from nurture.messages.render import (
    Locality,
    RenderError,
    TemplateProblem,
    babel_locale,
    compile_liquid,
    render_liquid,
)
from nurture.messages.template import (
    CHANNELS,
    EmailPart,
    TemplateDefinition,
    check,
    fallback_chain,
    parse_template,
)
from nurture.segments.definitions import DefinitionStore, check_key
from nurture.segments.engine import Engine
from nurture.store import Database

KIND = "template"
FOLDER = "templates"
_BODIES = {"html": "html", "mjml": "mjml", "txt": "text"}
_SEP = "\x1e\x1d\x1e"  # between the parts of a combined render; no trait holds it
# Previews have no tracking: links point nowhere real.
PREVIEW_LINKS = {
    "unsubscribe": "https://preview.invalid/unsubscribe",
    "preferences": "https://preview.invalid/preferences",
}


@dataclasses.dataclass(frozen=True)
class _Email:
    subject: BoundTemplate
    preheader: BoundTemplate | None
    html: BoundTemplate
    inline_each: bool  # CSS could not be inlined in the source: inline each render
    text: BoundTemplate | None  # None: derive the text from each rendered HTML
    # Subject, preheader and text as one template: one render instead of three.
    combined: BoundTemplate | None


class Template:
    """A checked template, compiled lazily per channel and locale chain."""

    def __init__(self, key: str, definition: TemplateDefinition, source: str, origin: str):
        self.key = key
        self.definition = definition
        self.source = source  # api | file
        self.origin = origin
        self.channels = [ch for ch in CHANNELS if definition.part(ch) is not None]
        self._compiled: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._defaults = [(p.split("."), v) for p, v in definition.defaults.items()]

    def chain(self, locale: str | None) -> tuple[str, ...]:
        """The variants a contact's locale reads, most specific first; '' is the default."""
        found = [tag for tag in fallback_chain(locale) if tag in self.definition.locales]
        return (*found, "")

    def _field(self, chain: tuple[str, ...], channel: str, name: str) -> str | None:
        variants = self.definition.variants()
        for tag in chain:
            part = variants[tag].part(channel)
            if part is None:
                continue
            if name in ("html", "mjml") and isinstance(part, EmailPart):
                if part.html is not None or part.mjml is not None:  # one body slot
                    return part.html if name == "html" else part.mjml
                continue
            value = getattr(part, name, None)
            if value is not None:
                return str(value) if not isinstance(value, str) else value
        return None

    def _compile(self, channel: str, chain: tuple[str, ...]) -> Any:
        cached = self._compiled.get((channel, chain))
        if cached is not None:
            return cached
        where = f"{self.key}.{channel}"

        def liquid(name: str, html: bool = False) -> BoundTemplate | None:
            source = self._field(chain, channel, name)
            return None if source is None else compile_liquid(source, f"{where}.{name}", html=html)

        compiled: Any
        if channel == "email":
            compiled = self._compile_email(chain, where, liquid)
        else:
            fields = {"sms": ("body",), "push": ("title", "body", "url", "icon")}
            compiled = {name: liquid(name) for name in fields.get(channel, ("text",))}
        self._compiled[(channel, chain)] = compiled
        return compiled

    def _compile_email(
        self, chain: tuple[str, ...], where: str, liquid: Callable[..., BoundTemplate | None]
    ) -> _Email:
        html = self._field(chain, "email", "html")
        mjml = self._field(chain, "email", "mjml")
        source = c.compile_mjml(mjml) if mjml is not None else html or ""
        inlined = c.inline_css_in_source(source)
        text_source = self._field(chain, "email", "text") or c.text_source_from_html(source)
        text = None if text_source is None else compile_liquid(text_source, f"{where}.text")
        subject, preheader = liquid("subject"), liquid("preheader")
        assert subject is not None  # checked when the template was saved
        combined = None
        if text_source is not None:
            parts = [self._field(chain, "email", n) or "" for n in ("subject", "preheader")]
            combined = compile_liquid(_SEP.join([*parts, text_source]), f"{where}.text")
        return _Email(
            subject=subject,
            preheader=preheader,
            html=compile_liquid(inlined or source, f"{where}.html", html=True),
            inline_each=inlined is None,
            text=text,
            combined=combined,
        )

    def with_defaults(self, context: dict[str, Any]) -> dict[str, Any]:
        """The context with the template's defaults where values are missing (copied along
        the paths it changes; the caller's context is left alone)."""
        if not self._defaults:
            return context
        out = dict(context)
        for path, value in self._defaults:
            node = out
            for part in path[:-1]:
                child = node.get(part)
                child = dict(child) if isinstance(child, dict) else {}
                node[part] = child
                node = child
            node.setdefault(path[-1], value)
        return out

    def locality(self, chain: tuple[str, ...], locale: str | None, timezone: str | None,
                 default_zone: str, now: datetime | None) -> Locality:  # fmt: skip
        """Numbers and dates follow the contact's locale when the message is in the
        contact's language, else the language the message is written in."""
        written = chain[0] or self.definition.locale
        tags = fallback_chain(locale)
        same = bool(tags) and tags[-1] == written.split("-")[0]
        chosen = babel_locale(tags[0]) if same else None
        return Locality(
            chosen or babel_locale(written) or babel_locale("en"),  # type: ignore[arg-type]
            zone(timezone, default_zone),
            self.definition.currency,
            now,
        )


class TemplateService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        project_dir: Path,
        *,
        engine: Engine | None = None,
        default_timezone: str = "UTC",
    ) -> None:
        self.db = db
        self.clock = clock
        self.folder = project_dir / FOLDER
        self.engine = engine
        self.default_timezone = default_timezone
        self._cache: dict[str, tuple[Any, Template]] = {}

    # -- reading -------------------------------------------------------------------------
    def get(self, key: str, *, conn: Connection | None = None) -> Template:
        """The template `key`: stored first, then the project folder. Raises NotFound, or
        TemplateProblem for a file that is not a valid template."""
        if conn is None:
            with self.db.read() as own:
                return self.get(key, conn=own)
        stored = DefinitionStore.get(conn, KIND, key)
        if stored is not None:
            return self._template(key, ("api", stored.body), stored.body, stored.source, key)
        files = self._files(key)
        if not files:
            raise NotFound(f"no template {key!r}", path="key", code="template_not_found")
        stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == ("file", stamp):
            return cached[1]
        body, origin = self._read(key, files)
        return self._template(key, ("file", stamp), body, "file", origin)

    def _template(self, key: str, stamp: Any, body: Any, source: str, origin: str) -> Template:
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        definition = parse_template(body, path=origin if source == "file" else "")
        problems = check(definition)
        if problems:
            raise problems[0]
        template = Template(key, definition, source, origin)
        self._cache[key] = (stamp, template)
        return template

    def _files(self, key: str) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{key}.*") if p.name.split(".")[0] == key)

    def _read(self, key: str, files: list[Path]) -> tuple[dict[str, Any], str]:
        """A file template as the body the store would hold: the YAML with its sibling
        body files put in (`welcome.html`, `welcome.de.mjml`, `welcome.txt`)."""
        names = {p.name: p for p in files}
        main = names.get(f"{key}.yaml") or names.get(f"{key}.yml")
        if main is None:
            raise TemplateProblem(
                f"templates/{key}.* has no templates/{key}.yaml saying what it sends",
                path=f"{FOLDER}/{files[0].name}",
            )
        origin = f"{FOLDER}/{main.name}"
        try:
            body = yaml.safe_load(main.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValidationError(f"not valid YAML: {exc}", path=origin) from None
        if not isinstance(body, dict):
            raise ValidationError("expected a mapping", path=origin)
        body.pop("key", None)
        for path in files:
            parts = path.name.split(".")
            field = _BODIES.get(parts[-1])
            if field is None or len(parts) not in (2, 3):
                continue
            target = body
            if len(parts) == 3:
                target = body.setdefault("locales", {}).setdefault(parts[1], {})
            email = target.setdefault("email", {})
            if field in email or (field in ("html", "mjml") and ({"html", "mjml"} & set(email))):
                raise ValidationError(
                    f"the email {field} is given in the YAML and in {path.name}", path=origin
                )
            email[field] = path.read_text(encoding="utf-8")
        return body, origin

    def read_files(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Every file template as (body, origin) by key, for applying to the store."""
        if not self.folder.is_dir():
            return {}
        keys = sorted({p.name.split(".")[0] for p in self.folder.iterdir() if p.is_file()})
        return {key: self._read(key, self._files(key)) for key in keys}

    # -- rendering -----------------------------------------------------------------------
    def render(
        self,
        template: Template,
        channel: str,
        context: dict[str, Any],
        locale: str | None = None,
        timezone: str | None = None,
    ) -> c.Rendered:
        """The message for one contact. Raises MissingValue (a variable without value or
        default) or RenderError (an empty SMS, one over its segment limit, a bad value)."""
        if channel not in template.channels:
            raise RenderError(
                f"template {template.key!r} has no {channel} part", code="no_channel_part"
            )
        chain = template.chain(locale)
        compiled = template._compile(channel, chain)
        here = template.locality(chain, locale, timezone, self.default_timezone, self.clock.now())
        context = template.with_defaults(context)

        def text(t: BoundTemplate | None) -> str:
            return "" if t is None else render_liquid(t, context, here).strip()

        if channel == "email":
            return self._email(compiled, context, here)
        if channel == "sms":
            # Babel spaces money and percent with no-break spaces, which GSM-7 lacks: one
            # would make the whole SMS UCS-2, at less than half the length per segment.
            sms = c.sms_segments(text(compiled["body"]).replace("\xa0", " ").replace("\u202f", " "))
            limit = template._field(chain, "sms", "max_segments")
            if not sms.body:
                raise RenderError("the SMS is empty", code="empty_message")
            if limit is not None and sms.segments > int(limit):
                raise RenderError(
                    f"the SMS is {sms.segments} segments ({sms.encoding}, {len(sms.body)} "
                    f"characters); the template allows {limit}",
                    code="sms_too_long",
                )
            return sms
        if channel == "push":
            title, body = text(compiled["title"]), text(compiled["body"])
            if not title or not body:
                raise RenderError("the push title or body is empty", code="empty_message")
            url, icon = text(compiled["url"]), text(compiled["icon"])
            return c.PushContent(title, body, url or None, icon or None)
        spoken = text(compiled["text"])
        if not spoken:
            raise RenderError("the voice text is empty", code="empty_message")
        return c.VoiceContent(spoken)

    def _email(self, compiled: _Email, context: dict[str, Any], here: Locality) -> c.EmailContent:
        parts: list[str] = []
        if compiled.combined is not None:
            parts = render_liquid(compiled.combined, context, here).split(_SEP)
        if len(parts) != 3:  # no text source, or a value holding the separator
            parts = [
                render_liquid(compiled.subject, context, here),
                ""
                if compiled.preheader is None
                else render_liquid(compiled.preheader, context, here),
                "" if compiled.text is None else render_liquid(compiled.text, context, here),
            ]
        subject, preheader = (" ".join(p.split()) for p in parts[:2])
        if not subject:
            raise RenderError("the subject is empty", code="empty_message")
        html = render_liquid(compiled.html, context, here)
        if compiled.inline_each:
            html = c.inline_css(html)
        text = parts[2].strip() + "\n" if compiled.text is not None else c.html_to_text(html)
        return c.EmailContent(subject, preheader, c.with_preheader(html, preheader), text)

    # -- the doors -----------------------------------------------------------------------
    def check(
        self, body: Any, *, path: str = ""
    ) -> tuple[TemplateDefinition, list[TemplateProblem]]:
        """The definition and every problem with it (a shape error raises)."""
        definition = parse_template(body, path=path)
        with self.db.read() as conn:
            computed = {d.key for d in DefinitionStore.all(conn, "computed")}
        return definition, check(definition, computed=computed, path=path)

    def put(self, key: str, body: Any) -> dict[str, Any]:
        """Create or replace a stored template, checked first."""
        try:
            check_key(key)
        except ValueError as exc:
            raise ValidationError(str(exc), path="key") from None
        definition, problems = self.check(body)
        if problems:
            first = problems[0]
            if len(problems) > 1:
                first.message += f" (and {len(problems) - 1} more)"
            raise first
        stored = definition.model_dump(exclude_defaults=True)
        with self.db.write() as conn:
            DefinitionStore.put(
                conn, KIND, key, stored, name=definition.name, source="api", now=self.clock.now()
            )
        return self.describe(key)

    def delete(self, key: str) -> None:
        """Remove a stored template (a file of the same key then applies again)."""
        with self.db.write() as conn:
            if not DefinitionStore.delete(conn, KIND, key):
                raise NotFound(f"no stored template {key!r}", path="key", code="template_not_found")
        self._cache.pop(key, None)

    def describe(self, key: str) -> dict[str, Any]:
        template = self.get(key)
        d = template.definition
        return {
            "key": key,
            "name": d.name,
            "source": template.source,
            "origin": template.origin,
            "channels": template.channels,
            "locales": sorted(d.locales),
            "definition": d.model_dump(exclude_defaults=True),
        }

    def all(self) -> list[dict[str, Any]]:
        """Every template, stored and file, with its problem if it has one."""
        with self.db.read() as conn:
            stored = {d.key for d in DefinitionStore.all(conn, KIND)}
        files = set(self.read_keys())
        out = []
        for key in sorted(stored | files):
            entry: dict[str, Any] = {"key": key, "shadows_file": key in stored and key in files}
            try:
                entry.update(self.describe(key))
                entry.pop("definition")
                entry["error"] = None
            except NurtureError as exc:
                entry.update(source="api" if key in stored else "file", error=str(exc))
            out.append(entry)
        return out

    def read_keys(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted({p.name.split(".")[0] for p in self.folder.iterdir() if p.is_file()})

    def validate_files(self) -> dict[str, list[NurtureError]]:
        """Every file template's problems by key (empty lists for good ones)."""
        out: dict[str, list[NurtureError]] = {}
        for key in self.read_keys():
            try:
                body, origin = self._read(key, self._files(key))
                out[key] = list(self.check(body, path=origin)[1])
            except NurtureError as exc:
                out[key] = [exc]
        return out

    def preview(
        self,
        key: str,
        *,
        contact_id: int | None = None,
        context: dict[str, Any] | None = None,
        channel: str | None = None,
        locale: str | None = None,
        links: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Render with a real contact's data (or an inline context), as it would be sent."""
        template = self.get(key)
        channel = channel or template.channels[0]
        if contact_id is not None:
            with self.db.read() as conn:
                person = contact(conn, contact_id, engine=self.engine, now=self.clock.now())
            full = message_context(person, None, links or PREVIEW_LINKS)
            full.update(clean(context or {}))
        else:
            full = clean({"links": links or PREVIEW_LINKS, **(context or {})})
        person_part = full.get("contact") or {}
        locale = locale or person_part.get("locale")
        rendered = self.render(template, channel, full, locale, person_part.get("timezone"))
        chain = template.chain(locale)
        return {
            "key": key,
            "channel": channel,
            "variant": chain[0] or "default",
            "content": dataclasses.asdict(rendered),
        }
