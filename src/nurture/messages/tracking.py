"""Tracking links in messages: the open pixel, click redirects, one-click unsubscribe and
the preference centre, each a signed token (nurture.messages.tokens) carrying the message.

`decorate_email` runs for every email sent, so it is written for speed: one precompiled
pattern finds the links, and the positions of the links of an HTML body seen before (the
same template rendered without personal values in its links) are reused.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from nurture.messages.tokens import BadToken, sign, verify

if TYPE_CHECKING:  # content.py loads MJML and CSS tools; settings import this module
    from nurture.messages.content import EmailContent

# The 1x1 transparent GIF the open pixel answers with.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058: the body a mail client POSTs

# An <a ...> tag with its href value (double-quoted, single-quoted or bare).
_ANCHOR = re.compile(
    r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))[^>]*>""", re.IGNORECASE
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"'()\[\]]+", re.IGNORECASE)
_NOTRACK = "data-nurture-notrack"

# Opens and clicks made by software, not by the person: Apple Mail Privacy Protection
# loads every image through a proxy that says only "Mozilla/5.0"; security scanners and
# link checkers follow every link. They are recorded, marked `machine: true`.
_MACHINE_AGENTS = re.compile(
    r"bot\b|crawler|spider|slurp|scanner|preview|prefetch|barracuda|mimecast|proofpoint|"
    r"symantec|trendmicro|forcepoint|fortiguard|sophos|messagelabs|safelinks|"
    r"python-|curl/|wget/|go-http-client|java/|okhttp|headless",
    re.IGNORECASE,
)


def is_machine(user_agent: str | None) -> bool:
    """Whether a request that opened or clicked was most likely made by software."""
    if not user_agent or user_agent.strip() == "Mozilla/5.0":
        return True
    return _MACHINE_AGENTS.search(user_agent) is not None


class TrackingConfig(BaseModel):
    """The `tracking` setting: which links are tracked and what they carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opens: bool = Field(True, description="Add the open pixel to HTML emails")
    clicks: bool = Field(True, description="Rewrite links to go through /t/c/ redirects")
    utm: dict[str, str] = Field(
        default_factory=dict,
        description="UTM parameters added to clicked links that lack them, e.g. "
        "{utm_source: nurture, utm_medium: email}",
    )
    utm_campaign_from_journey: bool = Field(
        False, description="Add utm_campaign=<journey key> to links that lack one"
    )
    unsubscribe_mailto: str | None = Field(
        None, description="An address added to List-Unsubscribe as a mailto: fallback"
    )


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Which message a link belongs to: what the tracking routes need, signed into it."""

    outbox_id: int
    contact_id: int
    channel: str = "email"
    topic: str | None = None
    kind: str = "marketing"
    journey: str | None = None  # for utm_campaign; not put into tokens

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"m": self.outbox_id, "c": self.contact_id, "ch": self.channel}
        if self.topic is not None:
            out["t"] = self.topic
        if self.kind != "marketing":
            out["k"] = self.kind
        return out

    @classmethod
    def of(cls, ref: MessageRef | Mapping[str, Any]) -> MessageRef:
        """A reference from itself or from a dict with keys message, contact, channel,
        topic, kind and journey (what the composer builds from an outbox row)."""
        if isinstance(ref, MessageRef):
            return ref
        return cls(
            outbox_id=int(ref["message"]),
            contact_id=int(ref["contact"]),
            channel=str(ref.get("channel") or "email"),
            topic=ref.get("topic"),
            kind=str(ref.get("kind") or "marketing"),
            journey=ref.get("journey"),
        )

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> MessageRef:
        """The reference a verified token carries; BadToken when it lacks a field."""
        try:
            return cls(
                outbox_id=int(data["m"]),
                contact_id=int(data["c"]),
                channel=str(data.get("ch", "email")),
                topic=data.get("t"),
                kind=str(data.get("k", "marketing")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BadToken("the link is not valid (it names no message)") from e


Ref = MessageRef | Mapping[str, Any]

# A parsed HTML body: literal pieces and, between them, (href as written, target URL or
# None when the link is not tracked).
_Parsed = tuple[tuple[str, ...], tuple[tuple[str, str | None], ...]]


class Tracker:
    """Signs and decorates tracking links; `secret` may be a callable read on first use
    (the installation's secret is only known once the database is migrated)."""

    def __init__(
        self,
        base_url: str,
        secret: str | Callable[[], str],
        config: TrackingConfig | None = None,
        *,
        cache_size: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config or TrackingConfig()
        self._secret_source = secret
        self._secret: str | None = secret if isinstance(secret, str) else None
        self._own = self.base_url + "/t/"
        self._cache: OrderedDict[str, _Parsed] = OrderedDict()
        self._cache_size = cache_size

    @property
    def secret(self) -> str:
        if self._secret is None:
            assert callable(self._secret_source)
            self._secret = self._secret_source()
        return self._secret

    # -- tokens ---------------------------------------------------------------------------
    def token(self, purpose: str, payload: dict[str, Any]) -> str:
        """A token for a tracking route (purposes: open, click, unsubscribe, preferences)."""
        return sign(self.secret, purpose, payload)

    def read(self, purpose: str, token: str) -> dict[str, Any]:
        """The payload of a token signed for `purpose`; raises BadToken otherwise."""
        return verify(self.secret, purpose, token)

    def links(self, ref: Ref) -> dict[str, str]:
        """The unsubscribe and preference-centre URLs of a message (template context)."""
        payload = MessageRef.of(ref).payload()
        return {
            "unsubscribe": f"{self.base_url}/t/u/{self.token('unsubscribe', payload)}",
            "preferences": f"{self.base_url}/t/p/{self.token('preferences', payload)}",
        }

    def confirm_url(self, token: str) -> str:
        """The double opt-in link for a token from ConsentService.request_confirmation."""
        return f"{self.base_url}/t/confirm/{token}"

    def email_headers(self, ref: Ref) -> dict[str, str]:
        """List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 one-click) for an email."""
        token = self.token("unsubscribe", MessageRef.of(ref).payload())
        value = f"<{self.base_url}/t/u/{token}>"
        if self.config.unsubscribe_mailto:
            value += f", <mailto:{self.config.unsubscribe_mailto}?subject=unsubscribe%20{token}>"
        return {"List-Unsubscribe": value, "List-Unsubscribe-Post": ONE_CLICK}

    # -- decoration -----------------------------------------------------------------------
    def decorate_email(self, content: EmailContent, ref: Ref) -> EmailContent:
        """Route http(s) links through signed click redirects (HTML and text parts) and add
        the open pixel before </body>. Links marked `data-nurture-notrack`, mailto:, tel:,
        anchors and our own /t/ links are left as they are."""
        ref = MessageRef.of(ref)
        payload = ref.payload()
        body = content.html
        text = content.text
        if self.config.clicks:
            # A link in both parts, or twice in one, is signed once.
            signed: dict[str, str] = {}
            body = self._html_links(body, payload, ref, signed)
            text = _TEXT_URL.sub(lambda m: self._text_link(m.group(0), payload, ref, signed), text)
        if self.config.opens and body:
            pixel = (
                f'<img src="{self.base_url}/t/o/{self.token("open", payload)}.gif" width="1" '
                'height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
            )
            ends = [m.start() for m in _BODY_END.finditer(body)]
            body = body[: ends[-1]] + pixel + body[ends[-1] :] if ends else body + pixel
        return replace(content, html=body, text=text)

    def click_url(self, target: str, payload: dict[str, Any]) -> str:
        """The redirect URL for `target`: the token carries the target, so only a URL we
        signed is ever redirected to."""
        return f"{self.base_url}/t/c/{self.token('click', {**payload, 'u': target})}"

    def _signed_click(
        self, target: str, payload: dict[str, Any], ref: MessageRef, signed: dict[str, str]
    ) -> str:
        url = signed.get(target)
        if url is None:
            url = signed[target] = self.click_url(self._with_utm(target, ref), payload)
        return url

    def _html_links(
        self, body: str, payload: dict[str, Any], ref: MessageRef, signed: dict[str, str]
    ) -> str:
        pieces, links = self._parse(body)
        if not links:
            return body
        out = [pieces[0]]
        for (written, target), piece in zip(links, pieces[1:], strict=True):
            if target is None:
                out.append(written)
            else:
                out.append(self._signed_click(target, payload, ref, signed))
            out.append(piece)
        return "".join(out)

    def _parse(self, body: str) -> _Parsed:
        cached = self._cache.get(body)
        if cached is not None:
            self._cache.move_to_end(body)
            return cached
        pieces: list[str] = []
        links: list[tuple[str, str | None]] = []
        at = 0
        for m in _ANCHOR.finditer(body):
            group = 1 if m.group(1) is not None else 2 if m.group(2) is not None else 3
            written = m.group(group)
            target = html.unescape(written).strip()
            tracked = (
                target[:8].lower().startswith(("http://", "https://"))
                and not target.startswith(self._own)
                and _NOTRACK not in m.group(0)
            )
            pieces.append(body[at : m.start(group)])
            links.append((written, target if tracked else None))
            at = m.end(group)
        pieces.append(body[at:])
        parsed: _Parsed = (tuple(pieces), tuple(links))
        self._cache[body] = parsed
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return parsed

    def _text_link(
        self, url: str, payload: dict[str, Any], ref: MessageRef, signed: dict[str, str]
    ) -> str:
        # A sentence's full stop or comma is not part of the link.
        stripped = url.rstrip(".,;:!?")
        if stripped.startswith(self._own):
            return url
        return self._signed_click(stripped, payload, ref, signed) + url[len(stripped) :]

    def _with_utm(self, url: str, ref: MessageRef) -> str:
        wanted = dict(self.config.utm)
        if self.config.utm_campaign_from_journey and ref.journey:
            wanted.setdefault("utm_campaign", ref.journey)
        if not wanted:
            return url
        parts = urlsplit(url)
        present = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
        missing = {k: v for k, v in wanted.items() if k not in present}
        if not missing:
            return url
        query = f"{parts.query}&{urlencode(missing)}" if parts.query else urlencode(missing)
        return urlunsplit(parts._replace(query=query))
