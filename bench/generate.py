"""The reference workload (DESIGN §10): a deterministic synthetic world of Segment messages.

N contacts (default 1,000,000) with about 10 events each over 90 days, for a SaaS product
and a shop: anonymous page views linked by an identify, signups, logins, feature use,
product views, cart adds, orders with revenue, renewals, payment failures, and email and
SMS feedback. The same seed gives byte-identical output (on the same Python minor version,
whose `random` algorithms we rely on).

Contacts are generated in blocks (`World.block` contacts each, from a RNG seeded by the
world seed and the block number) and each block's events are sorted by time, so a batch
of 100 mixes about 100 contacts as a real SDK's would, memory stays flat, and any block
can be generated on its own.

Library use::

    from bench.generate import World, iter_messages, write_jsonl
    for message in iter_messages(World(contacts=1000)): ...
    write_jsonl("world.jsonl.gz", World(), limit=1_000_000)

Command line::

    python -m bench.generate --contacts 100000 -o world.jsonl.gz
    python -m bench.generate --events 200000 -o - | head
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import math
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from bench.pools import (
    CAMPAIGNS,
    COMPANY_SUFFIXES,
    COMPANY_WORDS,
    COUNTRIES,
    COUNTRY_CUM,
    EMAIL_FEEDBACK,
    EMAIL_FEEDBACK_CUM,
    FEATURES,
    FIRST_NAMES,
    LAST_NAMES,
    LIB_JS,
    LIB_SERVER,
    MAIL_DOMAINS,
    PLAN_CUM,
    PLANS,
    PRODUCTS,
    REFERRERS,
    SAAS_APP,
    SAAS_CUM,
    SAAS_HOST,
    SAAS_KINDS,
    SAAS_MARKETING,
    SHOP_CUM,
    SHOP_HOST,
    SHOP_KINDS,
    SHOP_PAGES,
    SMS_FEEDBACK,
    SMS_FEEDBACK_CUM,
    SMS_REPLIES,
    USER_AGENTS,
    UUID_VARIANT,
    Country,
)

DAY_MS = 86_400_000
MINUTE_MS = 60_000


def company_name(number: int) -> str:
    """A company name from the pools, the same for the same number."""
    word = COMPANY_WORDS[number % len(COMPANY_WORDS)]
    return f"{word} {COMPANY_SUFFIXES[number // len(COMPANY_WORDS) % len(COMPANY_SUFFIXES)]}"


@dataclass(frozen=True)
class World:
    """The parameters of one synthetic world; equal worlds generate identical messages."""

    contacts: int = 1_000_000
    seed: int = 42
    days: int = 90
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    events_per_contact: float = 10.0
    saas_share: float = 0.55
    new_share: float = 0.4  # contacts who arrive (anonymously) and sign up in the window
    phone_share: float = 0.4
    block: int = 1000

    @property
    def blocks(self) -> int:
        return math.ceil(self.contacts / self.block)

    @classmethod
    def for_events(cls, events: int, **kwargs: Any) -> World:
        """A world with enough contacts for about `events` messages (take them with `limit`)."""
        per = kwargs.get("events_per_contact", cls.events_per_contact)
        return cls(contacts=math.ceil(events / per * 1.1) + 50, **kwargs)


@dataclass(slots=True)
class _Person:
    index: int
    user_id: str
    anonymous_id: str
    saas: bool
    country: Country
    timezone: str
    ip: str
    user_agent: str
    phone: str | None
    plan: str
    price: float
    currency: str


class _Block:
    """Generates the messages of one block of contacts, sorted by time."""

    def __init__(self, world: World, number: int) -> None:
        self.world = world
        self.rng = random.Random(world.seed * 1_000_003 + number)
        self.first = number * world.block
        self.last = min(world.contacts, self.first + world.block)
        self.span = world.days * DAY_MS
        start = world.start
        self.day_prefix = [
            (start + timedelta(days=d)).strftime("%Y-%m-%dT") for d in range(world.days + 2)
        ]
        self.out: list[tuple[int, int, dict[str, Any]]] = []
        # 1 + int(expovariate(rate)) events, plus the signup flow of new contacts: the
        # offset is measured so that the mean comes out at events_per_contact.
        self.rate = 1.0 / max(world.events_per_contact - 0.85, 0.5)

    # -- small helpers -----------------------------------------------------------------------

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def stamp(self, ms: int) -> str:
        day, rest = divmod(ms, DAY_MS)
        hour, rest = divmod(rest, 3_600_000)
        minute, rest = divmod(rest, MINUTE_MS)
        second, milli = divmod(rest, 1000)
        return f"{self.day_prefix[day]}{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"

    def emit(self, ms: int, message: dict[str, Any]) -> None:
        ms = min(max(ms, 0), self.span - 1)
        message["messageId"] = self.uuid()
        message["timestamp"] = self.stamp(ms)
        self.out.append((ms, len(self.out), message))

    def browser(self, p: _Person, path: str, title: str, host: str) -> dict[str, Any]:
        return {
            "library": {"name": LIB_JS[0], "version": LIB_JS[1]},
            "ip": p.ip,
            "userAgent": p.user_agent,
            "locale": p.country.locale,
            "timezone": p.timezone,
            "page": {
                "path": path,
                "url": host + path,
                "title": title,
                "referrer": self.rng.choice(REFERRERS),
            },
        }

    @staticmethod
    def server() -> dict[str, Any]:
        return {"library": {"name": LIB_SERVER[0], "version": LIB_SERVER[1]}}

    # -- one contact -------------------------------------------------------------------------

    def person(self, index: int) -> _Person:
        rng = self.rng
        country = rng.choices(COUNTRIES, cum_weights=COUNTRY_CUM)[0]
        saas = rng.random() < self.world.saas_share
        phone = None
        if rng.random() < self.world.phone_share:
            digits = str(rng.randrange(10**country.phone_digits)).zfill(country.phone_digits)
            if country.code in ("US", "CA"):
                digits = str(rng.randrange(2, 10)) + digits[1:]  # exchanges never start 0/1
            phone = rng.choice(country.phone_prefixes) + digits
        if saas:
            plan, _, price = rng.choices(PLANS, cum_weights=PLAN_CUM)[0]
        else:
            plan, price = ("member", 0.0)
        return _Person(
            index=index,
            user_id=f"usr_{index:08d}",
            anonymous_id=self.uuid(),
            saas=saas,
            country=country,
            timezone=rng.choice(country.timezones),
            ip=f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}."
            f"{rng.randrange(1, 255)}",
            user_agent=rng.choice(USER_AGENTS),
            phone=phone,
            plan=plan,
            price=price,
            currency=country.currency if not saas else "USD",
        )

    def traits(self, p: _Person, created_ms: int) -> dict[str, Any]:
        rng = self.rng
        first = FIRST_NAMES[(p.index * 7 + self.world.seed) % len(FIRST_NAMES)]
        last = LAST_NAMES[(p.index * 13 + self.world.seed) % len(LAST_NAMES)]
        domain = rng.choice(MAIL_DOMAINS)
        traits: dict[str, Any] = {
            "email": f"{first}.{last}.{p.index}@{domain}".lower(),
            "firstName": first,
            "lastName": last,
            "name": f"{first} {last}",
            "plan": p.plan,
            "country": p.country.code,
            "timezone": p.timezone,
            "locale": p.country.locale,
            "createdAt": self.stamp(max(created_ms, 0)),
        }
        if p.phone is not None:
            traits["phone"] = p.phone
        if p.saas:
            traits["company"] = {
                "name": company_name(p.index),
                "size": rng.choice((1, 5, 12, 40, 150, 800)),
            }
        else:
            traits["loyaltyPoints"] = rng.randrange(0, 2000, 10)
        traits["marketingOptIn"] = rng.random() < 0.7
        return traits

    def contact(self, index: int) -> None:
        rng = self.rng
        p = self.person(index)
        total = 1 + int(rng.expovariate(self.rate))
        if rng.random() < self.world.new_share:
            # From day 3, so that the anonymous visits before it fall inside the window.
            signup = rng.randrange(3 * DAY_MS, int(self.span * 0.97))
            done = self.arrival(p, signup)
            begin = signup + MINUTE_MS
        else:
            begin = 0
            done = 0
            if rng.random() < 0.5:
                at = int(rng.random() * self.span * 0.5)
                self.emit(
                    at,
                    {
                        "type": "identify",
                        "userId": p.user_id,
                        "traits": self.traits(p, -1),
                        "context": self.server(),
                    },
                )
                done = 1
        rest = total - done
        if rest <= 0:
            return
        kinds, cum = (SAAS_KINDS, SAAS_CUM) if p.saas else (SHOP_KINDS, SHOP_CUM)
        times = sorted(rng.randrange(begin, self.span) for _ in range(rest))
        for kind, ms in zip(rng.choices(kinds, cum_weights=cum, k=rest), times, strict=True):
            self.action(p, kind, ms)

    def arrival(self, p: _Person, signup: int) -> int:
        """Anonymous visits, then the identify that links them, then the signup."""
        rng = self.rng
        anonymous = rng.randrange(1, 4)
        before = sorted(signup - rng.randrange(MINUTE_MS, 3 * DAY_MS) for _ in range(anonymous))
        for ms in before:
            if p.saas:
                path, title = rng.choice(SAAS_MARKETING)
                self.page(p, ms, path, title, SAAS_HOST, identified=False)
            elif rng.random() < 0.5:
                path, title = rng.choice(SHOP_PAGES)
                self.page(p, ms, path, title, SHOP_HOST, identified=False)
            else:
                self.product(p, ms, "Product Viewed", identified=False)
        host = SAAS_HOST if p.saas else SHOP_HOST
        self.emit(
            signup,
            {
                "type": "identify",
                "userId": p.user_id,
                "anonymousId": p.anonymous_id,
                "traits": self.traits(p, signup),
                "context": self.browser(p, "/signup", "Sign up", host),
            },
        )
        self.emit(
            signup + rng.randrange(200, 3000),
            {
                "type": "track",
                "userId": p.user_id,
                "anonymousId": p.anonymous_id,
                "event": "Signed Up",
                "properties": {"plan": p.plan, "method": rng.choice(("email", "google"))},
                "context": self.browser(p, "/signup", "Sign up", host),
            },
        )
        count = anonymous + 2
        if p.saas and rng.random() < 0.3:
            company = p.index // 20
            self.emit(
                signup + 5000,
                {
                    "type": "group",
                    "userId": p.user_id,
                    "groupId": f"org_{company:07d}",
                    "traits": {
                        "name": company_name(company),
                        "plan": p.plan,
                    },
                    "context": self.server(),
                },
            )
            count += 1
        return count

    def page(
        self, p: _Person, ms: int, path: str, title: str, host: str, *, identified: bool
    ) -> None:
        message: dict[str, Any] = {"type": "page"}
        if identified:
            message["userId"] = p.user_id
        message["anonymousId"] = p.anonymous_id
        message["name"] = title
        message["properties"] = {"path": path, "url": host + path, "title": title}
        message["context"] = self.browser(p, path, title, host)
        self.emit(ms, message)

    def product(self, p: _Person, ms: int, event: str, *, identified: bool) -> None:
        sku, name, category, price = self.rng.choice(PRODUCTS)
        path = f"/products/{sku.lower()}"
        message: dict[str, Any] = {"type": "track"}
        if identified:
            message["userId"] = p.user_id
        message["anonymousId"] = p.anonymous_id
        message["event"] = event
        message["properties"] = {
            "product_id": sku,
            "sku": sku,
            "name": name,
            "category": category,
            "price": price,
            "currency": p.currency,
            "quantity": 1,
        }
        message["context"] = self.browser(p, path, name, SHOP_HOST)
        self.emit(ms, message)

    def track(self, p: _Person, ms: int, event: str, properties: dict[str, Any]) -> None:
        self.emit(
            ms,
            {
                "type": "track",
                "userId": p.user_id,
                "event": event,
                "properties": properties,
                "context": self.server(),
            },
        )

    def action(self, p: _Person, kind: str, ms: int) -> None:
        rng = self.rng
        if kind == "page":
            path, title = rng.choice(SAAS_APP if p.saas else SHOP_PAGES)
            self.page(p, ms, path, title, SAAS_HOST if p.saas else SHOP_HOST, identified=True)
        elif kind == "login":
            self.track(p, ms, "Logged In", {"method": rng.choice(("password", "google", "sso"))})
        elif kind == "feature":
            self.track(p, ms, "Feature Used", {"feature": rng.choice(FEATURES), "plan": p.plan})
        elif kind in ("product_viewed", "product_added"):
            event = "Product Viewed" if kind == "product_viewed" else "Product Added"
            self.product(p, ms, event, identified=True)
        elif kind == "checkout_started":
            items = rng.randrange(1, 4)
            value = round(sum(rng.choice(PRODUCTS)[3] for _ in range(items)), 2)
            self.track(
                p,
                ms,
                "Checkout Started",
                {"value": value, "currency": p.currency, "items": items},
            )
        elif kind == "order":
            self.order(p, ms)
        elif kind == "refund":
            self.track(
                p,
                ms,
                "Order Refunded",
                {"order_id": f"ord_{rng.getrandbits(40):010x}", "currency": p.currency},
            )
        elif kind == "renewal":
            if p.price <= 0:
                self.track(p, ms, "Logged In", {"method": "password"})
                return
            annual = rng.random() < 0.2
            amount = round(p.price * (10 if annual else 1), 2)
            self.track(
                p,
                ms,
                "Subscription Renewed",
                {
                    "plan": p.plan,
                    "period": "annual" if annual else "monthly",
                    "amount": amount,
                    "revenue": amount,
                    "currency": "USD",
                },
            )
        elif kind == "payment_failed":
            amount = p.price if p.saas and p.price > 0 else rng.choice(PRODUCTS)[3]
            self.track(
                p,
                ms,
                "Payment Failed",
                {
                    "amount": amount,
                    "currency": p.currency,
                    "reason": rng.choice(("card_declined", "insufficient_funds", "expired_card")),
                    "attempt": rng.randrange(1, 4),
                },
            )
        elif kind == "identify":
            traits: dict[str, Any] = {"plan": p.plan, "lastSeenAt": self.stamp(ms)}
            if not p.saas:
                traits["loyaltyPoints"] = rng.randrange(0, 5000, 10)
            self.emit(
                ms,
                {
                    "type": "identify",
                    "userId": p.user_id,
                    "traits": traits,
                    "context": self.server(),
                },
            )
        elif kind == "sms" and p.phone is not None:
            self.sms(p, ms)
        else:  # email, and sms for contacts without a phone
            self.email(p, ms)

    def order(self, p: _Person, ms: int) -> None:
        rng = self.rng
        products = []
        for _ in range(rng.choices((1, 2, 3, 4), cum_weights=(60, 85, 95, 100))[0]):
            sku, name, category, price = rng.choice(PRODUCTS)
            quantity = rng.choices((1, 2, 3), cum_weights=(85, 97, 100))[0]
            products.append(
                {
                    "product_id": sku,
                    "sku": sku,
                    "name": name,
                    "category": category,
                    "price": price,
                    "quantity": quantity,
                }
            )
        subtotal = round(sum(x["price"] * x["quantity"] for x in products), 2)
        shipping = 0.0 if subtotal >= 75 else 6.95
        tax = round(subtotal * 0.08, 2)
        self.track(
            p,
            ms,
            "Order Completed",
            {
                "order_id": f"ord_{rng.getrandbits(40):010x}",
                "total": round(subtotal + shipping + tax, 2),
                "revenue": subtotal,
                "shipping": shipping,
                "tax": tax,
                "currency": p.currency,
                "products": products,
            },
        )

    def email(self, p: _Person, ms: int) -> None:
        rng = self.rng
        event = rng.choices(EMAIL_FEEDBACK, cum_weights=EMAIL_FEEDBACK_CUM)[0][0]
        campaign, subject = rng.choice(CAMPAIGNS)
        properties: dict[str, Any] = {
            "email_id": f"msg_{rng.getrandbits(48):012x}",
            "campaign_id": campaign,
            "email_subject": subject,
            "channel": "email",
        }
        if event == "Email Link Clicked":
            properties["link_url"] = (SAAS_HOST if p.saas else SHOP_HOST) + "/?utm_source=email"
        elif event == "Email Bounced":
            properties["bounce_type"] = rng.choice(("hard", "soft", "soft"))
        self.track(p, ms, event, properties)

    def sms(self, p: _Person, ms: int) -> None:
        rng = self.rng
        event = rng.choices(SMS_FEEDBACK, cum_weights=SMS_FEEDBACK_CUM)[0][0]
        campaign, _ = rng.choice(CAMPAIGNS)
        properties: dict[str, Any] = {
            "message_id": f"sms_{rng.getrandbits(48):012x}",
            "campaign_id": campaign,
            "channel": "sms",
            "to": p.phone,
        }
        if event == "SMS Replied":
            properties["body"] = rng.choice(SMS_REPLIES)
        self.track(p, ms, event, properties)

    def run(self) -> list[dict[str, Any]]:
        for index in range(self.first, self.last):
            self.contact(index)
        self.out.sort(key=lambda item: (item[0], item[1]))
        return [message for _, _, message in self.out]


def block_messages(world: World, number: int) -> list[dict[str, Any]]:
    """The messages of block `number` (contacts `number * world.block` onwards), by time."""
    if not 0 <= number < world.blocks:
        raise ValueError(f"block {number} is outside 0..{world.blocks - 1}")
    return _Block(world, number).run()


def iter_messages(
    world: World, *, limit: int | None = None, blocks: Iterable[int] | None = None
) -> Iterator[dict[str, Any]]:
    """Every message of the world (or of `blocks`), block by block, at most `limit`."""
    numbers = range(world.blocks) if blocks is None else blocks
    stream = itertools.chain.from_iterable(block_messages(world, n) for n in numbers)
    return stream if limit is None else itertools.islice(stream, limit)


def iter_lines(
    world: World, *, limit: int | None = None, blocks: Iterable[int] | None = None
) -> Iterator[bytes]:
    """The messages as JSON lines (bytes, newline-terminated)."""
    dumps = orjson.dumps
    for message in iter_messages(world, limit=limit, blocks=blocks):
        yield dumps(message) + b"\n"


def write_jsonl(
    path: str | Path | BinaryIO,
    world: World,
    *,
    limit: int | None = None,
    compress: bool | None = None,
    level: int = 1,
) -> int:
    """Write the world as JSONL (gzip when `compress`, or when the name ends in .gz);
    returns the number of messages written. Memory stays flat: one block at a time."""
    if not isinstance(path, str | Path):
        return _write_lines(path, world, limit)
    target = Path(path)
    if compress is None:
        compress = target.suffix == ".gz"
    if compress:
        with gzip.open(target, "wb", compresslevel=level) as out:
            return _write_lines(out, world, limit)  # type: ignore[arg-type]
    with target.open("wb", buffering=1 << 20) as out:
        return _write_lines(out, world, limit)


def _write_lines(out: BinaryIO, world: World, limit: int | None) -> int:
    count = 0
    chunk: list[bytes] = []
    for line in iter_lines(world, limit=limit):
        chunk.append(line)
        if len(chunk) == 2000:
            out.write(b"".join(chunk))
            count += len(chunk)
            chunk.clear()
    out.write(b"".join(chunk))
    return count + len(chunk)


def main(argv: list[str] | None = None) -> int:
    """Command line: write a world as JSONL (or JSONL.gz) to a file or stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--contacts", type=int, help="contacts (default 1,000,000, or enough for --events)"
    )
    parser.add_argument("--events", type=int, help="stop after this many messages")
    parser.add_argument("--seed", type=int, default=World.seed)
    parser.add_argument("--days", type=int, default=World.days)
    parser.add_argument(
        "-o", "--output", default="-", help="file (.gz to compress) or - for stdout"
    )
    parser.add_argument("--gzip", action="store_true", help="compress even without .gz")
    parser.add_argument("--level", type=int, default=1, help="gzip level (default 1: fast)")
    args = parser.parse_args(argv)
    if args.contacts is None and args.events is not None:
        world = World.for_events(args.events, seed=args.seed, days=args.days)
    else:
        world = World(contacts=args.contacts or World.contacts, seed=args.seed, days=args.days)
    if args.output == "-":
        if args.gzip:
            with gzip.GzipFile(
                fileobj=sys.stdout.buffer, mode="wb", compresslevel=args.level
            ) as gz:
                count = write_jsonl(gz, world, limit=args.events)  # type: ignore[arg-type]
        else:
            count = write_jsonl(sys.stdout.buffer, world, limit=args.events)
    else:
        count = write_jsonl(
            args.output, world, limit=args.events, compress=args.gzip or None, level=args.level
        )
    print(f"{count} messages, {world.contacts} contacts, seed {world.seed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
