"""The suppression list: addresses that must not be written to, kept only as salted hashes.

Fed by hard bounces, spam complaints, SMS STOP replies, manual adds and erasure. One row
per address (`suppressions.hash` = sha256(salt + normalised address)); when a harder
reason arrives for an address already listed, the row takes the harder reason, so that a
START reply (which lifts only "stop") can never lift a bounce, a complaint or an erasure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import Connection, delete, func, select, update

from nurture.clock import Clock
from nurture.contacts.privacy import suppression_hash
from nurture.contacts.profile import normalize_email, normalize_phone
from nurture.errors import NurtureError, ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows, one_of

AddressKind = Literal["email", "phone"]
Reason = Literal["bounced", "complained", "stop", "manual"]
StoredReason = Literal["erased", "bounced", "complained", "stop", "manual"]

# Weakest first: a row only ever moves to a harder reason.
_RANK: dict[str, int] = {"stop": 0, "manual": 1, "bounced": 2, "complained": 3, "erased": 4}

# The carriers' opt-out and opt-in keywords (CTIA Messaging Principles; Twilio's defaults).
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
_PUNCTUATION = re.compile(r"[\s.!?,;:'\"]+")


class ErasedAddress(NurtureError):
    """The address belongs to an erased contact: it stays suppressed for good."""

    code = "erased_address"
    http_status = 409


def _keyword(text: str) -> str:
    # "Stop.", " stop ", "STOP!" and "Stop all" are all the keyword as carriers read it.
    return " ".join(_PUNCTUATION.sub(" ", text).upper().split())


def is_stop_word(text: str) -> bool:
    """Whether an SMS reply is a carrier opt-out keyword (STOP, UNSUBSCRIBE, ...)."""
    return _keyword(text) in STOP_WORDS


def is_start_word(text: str) -> bool:
    """Whether an SMS reply is a carrier opt-in keyword (START, YES, UNSTOP)."""
    return _keyword(text) in START_WORDS


def guess_kind(address: str) -> AddressKind:
    """`email` for anything with an @, otherwise `phone`."""
    return "email" if "@" in address else "phone"


def normalize_address(kind: str, address: str, region: str | None = None) -> str:
    """The address as profiles store it: a lowercased email or an E.164 number.

    Raises ValidationError (path `address`) for something that is neither.
    """
    if kind not in get_args(AddressKind):
        raise ValidationError(f"unknown address kind {kind!r}; use email or phone", path="kind")
    text = address.strip()
    if kind == "email":
        normalized, problem = normalize_email(text)
    else:
        normalized, problem = normalize_phone(text, region)
    if normalized is None:
        raise ValidationError(f"{address!r} is not a valid {kind}: {problem}", path="address")
    return normalized


@dataclass(frozen=True, slots=True)
class Entry:
    """One suppressed address (its hash, never the address itself)."""

    hash: str
    kind: str
    reason: str
    created_at: datetime
    detail: str | None


class Suppressions:
    """Add, lift and check suppressed addresses. `region` reads national phone numbers."""

    def __init__(self, db: Database, clock: Clock, *, region: str | None = None) -> None:
        self.db = db
        self.clock = clock
        self.region = region
        self._salt: str | None = None

    def salt(self) -> str:
        """The installation's salt (from `meta`), read once."""
        if self._salt is None:
            salt = self.db.meta_value("salt")
            if salt is None:
                raise RuntimeError("the database has no salt; run migrations first")
            self._salt = salt
        return self._salt

    def key(self, kind: str, address: str) -> str:
        """The hash an address is stored under (normalised first)."""
        return suppression_hash(self.salt(), normalize_address(kind, address, self.region))

    def add(
        self,
        kind: AddressKind,
        address: str,
        reason: Reason,
        detail: str | None = None,
        *,
        conn: Connection | None = None,
    ) -> bool:
        """Suppress an address; True if it was not suppressed, or only for a weaker reason.

        The address itself is never stored: it is removed from `detail` too, so that an
        erasure leaves nothing that names the person.
        """
        if reason not in get_args(Reason):
            raise ValidationError(
                f"unknown reason {reason!r}; use bounced, complained, stop or manual",
                path="reason",
            )
        normalized = normalize_address(kind, address, self.region)
        if detail:
            for form in {address.strip(), normalized}:
                detail = re.sub(re.escape(form), "[address]", detail, flags=re.IGNORECASE)
        row = {
            "hash": suppression_hash(self.salt(), normalized),
            "kind": kind,
            "reason": reason,
            "created_at": self.clock.now(),
            "detail": detail,
        }
        if conn is None:
            with self.db.write() as own:
                return self._add(own, row)
        return self._add(conn, row)

    @staticmethod
    def _add(conn: Connection, row: dict[str, object]) -> bool:
        if insert_rows(conn, t.suppressions, [row], ignore_conflicts=True):
            return True
        # Listed already: harden the reason in one statement, so two writers cannot
        # weaken each other's row.
        s = t.suppressions.c
        weaker = [name for name, rank in _RANK.items() if rank < _RANK[str(row["reason"])]]
        changed = conn.execute(
            update(t.suppressions)
            .where(s.hash == row["hash"], s.reason.in_(weaker))
            .values(reason=row["reason"], detail=row["detail"], created_at=row["created_at"])
        ).rowcount
        return bool(changed)

    def remove(
        self,
        kind: AddressKind,
        address: str,
        *,
        reasons: Iterable[str] = ("stop",),
        conn: Connection | None = None,
    ) -> bool:
        """Lift a suppression held for one of `reasons`; True if one was lifted.

        A START reply lifts only "stop". An erased address is never lifted: asking to
        raises ErasedAddress.
        """
        allowed = set(reasons)
        if "erased" in allowed:
            raise ErasedAddress(
                "an erased contact's address stays suppressed; it cannot be lifted",
                path="reasons",
            )
        hashed = self.key(kind, address)
        if conn is None:
            with self.db.write() as own:
                return self._remove(own, hashed, allowed)
        return self._remove(conn, hashed, allowed)

    @staticmethod
    def _remove(conn: Connection, hashed: str, reasons: set[str]) -> bool:
        s = t.suppressions.c
        current = conn.execute(select(s.reason).where(s.hash == hashed)).scalar()
        if current == "erased":
            raise ErasedAddress(
                "this address belonged to an erased contact; it stays suppressed",
                path="address",
            )
        gone = conn.execute(
            delete(t.suppressions).where(s.hash == hashed, s.reason.in_(sorted(reasons)))
        ).rowcount
        return bool(gone)

    def lookup(self, kind: AddressKind, address: str) -> Entry | None:
        """The suppression of one address, or None."""
        hashed = self.key(kind, address)
        with self.db.read() as conn:
            query = select(t.suppressions).where(t.suppressions.c.hash == hashed)
            row = conn.execute(query).first()
        if row is None:
            return None
        return Entry(row.hash, row.kind, row.reason, row.created_at, row.detail)

    def reasons(self, conn: Connection, hashes: Iterable[str]) -> dict[str, str]:
        """The reason each listed hash is suppressed for (unlisted hashes are absent)."""
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        s = t.suppressions.c
        rows = conn.execute(select(s.hash, s.reason).where(one_of(conn, s.hash, wanted)))
        return {row.hash: row.reason for row in rows}

    def suppressed(
        self, conn: Connection, items: list[tuple[AddressKind, str]]
    ) -> set[tuple[AddressKind, str]]:
        """Which of these (kind, address) pairs are suppressed, for any reason.

        Addresses that cannot be read (not an email, not a phone number) are left out.
        """
        keyed: dict[str, list[tuple[AddressKind, str]]] = {}
        for kind, address in items:
            try:
                keyed.setdefault(self.key(kind, address), []).append((kind, address))
            except ValidationError:
                continue
        found = self.reasons(conn, keyed)
        return {item for hashed in found for item in keyed[hashed]}

    def counts(self) -> dict[tuple[str, str], int]:
        """How many addresses are suppressed, by (kind, reason)."""
        s = t.suppressions.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(s.kind, s.reason, func.count()).group_by(s.kind, s.reason)
            ).all()
        return {(row[0], row[1]): int(row[2]) for row in rows}

    def recent(self, limit: int = 50) -> list[Entry]:
        """The most recently suppressed addresses (hashes), newest first."""
        s = t.suppressions.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(t.suppressions).order_by(s.created_at.desc(), s.hash).limit(limit)
            ).all()
        return [Entry(r.hash, r.kind, r.reason, r.created_at, r.detail) for r in rows]
