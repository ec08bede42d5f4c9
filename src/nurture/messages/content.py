"""What a rendered message contains, per channel, and the work on email HTML and SMS text
that does not depend on the contact: MJML, CSS inlining, the plain-text part, SMS encoding
and segments.

Email HTML is prepared once per template and locale: CSS is inlined into the Liquid
*source* (Liquid markup is hidden from the HTML parser behind placeholders, so a
`{% for %}` between table rows stays where it was), and the plain-text part is derived
from the source too. Only when that cannot be done faithfully does the work happen after
each render instead (slower, same result); `PreparedHtml` says which.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass
from typing import Any, Literal

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from inscriptis.model.tag import CustomHtmlTagHandlerMapping
from mjml import mjml2html


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    preheader: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class SmsContent:
    body: str
    encoding: Literal["GSM-7", "UCS-2"]
    segments: int


@dataclass(frozen=True, slots=True)
class PushContent:
    title: str
    body: str
    url: str | None
    icon: str | None


@dataclass(frozen=True, slots=True)
class VoiceContent:
    text: str


Rendered = EmailContent | SmsContent | PushContent | VoiceContent


# -- SMS ----------------------------------------------------------------------------------
# 3GPP TS 23.038: the GSM 7-bit default alphabet, and its extension table (each of those
# is sent as ESC + char, two septets).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def sms_encoding(body: str) -> Literal["GSM-7", "UCS-2"]:
    """GSM-7 when every character is in the basic set or its extension, else UCS-2."""
    ok = GSM7_BASIC | GSM7_EXTENSION
    return "GSM-7" if all(ch in ok for ch in body) else "UCS-2"


def _parts(units: list[int], single: int, per_part: int) -> int:
    """Segments for characters of `units` width each; a character never straddles two
    parts (an ESC pair or a surrogate pair stays whole)."""
    total = sum(units)
    if total <= single:
        return 1 if total else 0
    parts, used = 1, 0
    for width in units:
        if used + width > per_part:
            parts, used = parts + 1, 0
        used += width
    return parts


def sms_segments(body: str) -> SmsContent:
    """The body with its encoding and segment count: GSM-7 160 single / 153 per part of a
    long message, UCS-2 70 / 67 UTF-16 code units."""
    if sms_encoding(body) == "GSM-7":
        units = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
        return SmsContent(body, "GSM-7", _parts(units, 160, 153))
    units = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
    return SmsContent(body, "UCS-2", _parts(units, 70, 67))


# -- email HTML ---------------------------------------------------------------------------
_MARKUP = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_BODY = re.compile(r"<body\b[^>]*>", re.I)
_TABLE_TAGS = re.compile(r"<(/?)(table|thead|tbody|tfoot|tr|td|th)\b", re.I)
_INLINER = css_inline.CSSInliner(
    keep_at_rules=True,  # media queries cannot be inlined; they stay in a <style>
    load_remote_stylesheets=False,  # sandbox: rendering never fetches anything
)


def compile_mjml(source: str) -> str:
    """MJML to HTML; raises ValueError with MJML's message. `mj-include` is refused (no
    file system access from templates)."""
    return str(mjml2html(source))


def inline_css(html: str) -> str:
    return str(_INLINER.inline(html))


def _in_tag(source: str, at: int) -> bool:
    """Whether `at` is inside a tag's angle brackets (an attribute value)."""
    return source.rfind("<", 0, at) > source.rfind(">", 0, at)


def _split(source: str) -> tuple[list[str], list[str], list[bool]]:
    """Text around the Liquid markup, the markup, and whether each is in an attribute."""
    texts, marks, in_attr, last = [], [], [], 0
    for match in _MARKUP.finditer(source):
        texts.append(source[last : match.start()])
        marks.append(match.group())
        in_attr.append(_in_tag(source, match.start()))
        last = match.end()
    texts.append(source[last:])
    return texts, marks, in_attr


def _word(i: int) -> str:
    return f"nrtlq{i}qltrn"


def inline_css_in_source(source: str) -> str | None:
    """The Liquid source with its CSS inlined, or None when the HTML parser would move
    or drop markup (Liquid inside <style> or <title>, for instance)."""
    texts, marks, in_attr = _split(source)
    # Comments stay where they are, even between table rows; attribute values keep text.
    hidden = [_word(i) if attr else f"<!--{_word(i)}-->" for i, attr in enumerate(in_attr)]
    protected = "".join(t + (hidden[i] if i < len(marks) else "") for i, t in enumerate(texts))
    out = inline_css(protected)
    for placeholder, mark in zip(hidden, marks, strict=True):
        if out.count(placeholder) != 1:
            return None
        out = out.replace(placeholder, mark)
    return out


def _text_config() -> ParserConfig:
    def a_start(state: Any, attrs: dict[str, str]) -> None:
        state.link_target = attrs.get("href", "")

    def a_end(state: Any) -> None:
        target = state.link_target
        if target and not target.startswith("#"):
            state.tags[-1].write(f" ({target})")  # "text (url)": readable, and clickable

    handlers = CustomHtmlTagHandlerMapping({"a": a_start}, {"a": a_end})
    return ParserConfig(display_links=True, custom_html_tag_handler_mapping=handlers)


_TEXT_CONFIG = _text_config()
_BLANK_LINES = re.compile(r"\n[ \t]*(\n[ \t]*)+\n")


def html_to_text(html: str) -> str:
    """The plain-text part of an email: its words, lists and tables, links as `text (url)`."""
    text = get_text(html, _TEXT_CONFIG)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def _in_table_structure(source: str, at: int) -> bool:
    """Whether `at` sits directly in a table, between rows or cells: text there is moved
    out of the table by HTML parsers, so a text part derived from it would be wrong."""
    stack: list[str] = []
    for match in _TABLE_TAGS.finditer(source, 0, at):
        closing, name = match.group(1), match.group(2).lower()
        if not closing:
            stack.append(name)
        elif name in stack:
            del stack[len(stack) - 1 - stack[::-1].index(name) :]
    return bool(stack) and stack[-1] not in ("td", "th")


def text_source_from_html(source: str) -> str | None:
    """The plain-text part as Liquid source, derived once from the HTML source; None when
    the markup's order or place would not survive (then it is derived after each render)."""
    texts, marks, in_attr = _split(source)
    if any(
        not a and _in_table_structure(source, _pos(texts, marks, i)) for i, a in enumerate(in_attr)
    ):
        return None
    protected = "".join(t + (_word(i) if i < len(marks) else "") for i, t in enumerate(texts))
    text = html_to_text(protected)
    body_marks = [i for i, a in enumerate(in_attr) if not a]
    found = sorted(body_marks, key=lambda i: text.find(_word(i)))
    if found != body_marks or any(_word(i) not in text for i in body_marks):
        return None
    restored = text
    for i, mark in enumerate(marks):
        restored = restored.replace(_word(i), mark)
    return restored


def _pos(texts: list[str], marks: list[str], i: int) -> int:
    return sum(len(t) for t in texts[: i + 1]) + sum(len(m) for m in marks[:i])


def with_preheader(html: str, preheader: str) -> str:
    """The preheader as the hidden first text of the body: what inboxes show after the
    subject. Padded so the body's first words do not follow it in the preview."""
    if not preheader:
        return html
    span = (
        '<div style="display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;'
        'opacity:0;overflow:hidden;mso-hide:all">'
        + html_lib.escape(preheader)
        + "&#847;&zwnj;&nbsp;" * 40
        + "</div>"
    )
    body = _BODY.search(html)
    at = body.end() if body else 0
    return html[:at] + span + html[at:]
