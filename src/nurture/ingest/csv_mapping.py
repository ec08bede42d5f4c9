"""CSV mapping: where each column of a CSV file goes, and a CSV row as a Segment message.

Each row becomes an `identify` (`kind="contacts"`) or a `track` (`kind="events"`);
without a kind, a file with an `event` column holds events, any other holds
contacts (`guess_kind`).

CSV columns are mapped by name. Recognised without a mapping: `userId`/`user_id`
(or `id` when no other column is the user id), `anonymousId`/`anonymous_id`,
`messageId`/`message_id`, `timestamp`, and for events `event`. Every other column
is a trait (contacts) or a property (events); a dotted name (`address.city`)
nests. `mapping` (`--map column=target` on the command line) overrides this per
column. A target is one of:

- `userId`, `anonymousId`, `messageId`, `timestamp`, `event`;
- `traits.<path>`, `properties.<path>`, `context.<path>` (for events,
  `traits.<path>` goes to `context.traits`);
- a bare name, which goes to the row's default place (`email` → `traits.email`
  for contacts, `properties.email` for events);
- `-` to drop the column.

A target may end with a type: `:string` (the default: cells stay strings, so
`00123` keeps its zeros), `:number` (an integer when the cell is one, else a
float), `:int`, `:float`, `:bool` (true/false, yes/no, 1/0, t/f, y/n) or
`:json`. `column=:number` keeps the column's default target and sets only its
type. Cells are stripped of surrounding spaces; empty cells are absent, never
empty strings.

Rows are turned into messages deterministically (the same row gives the same
message), which is what lets a re-imported file be stored as duplicates only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from nurture.errors import ValidationError

Kind = Literal["events", "contacts"]

KINDS: tuple[Kind, ...] = ("events", "contacts")
TYPES = ("string", "number", "int", "float", "bool", "json")
_TOP_FIELDS = ("userId", "anonymousId", "messageId", "timestamp", "event")
_DEFAULT_COLUMNS = {
    "userid": "userId",
    "anonymousid": "anonymousId",
    "messageid": "messageId",
    "timestamp": "timestamp",
    "event": "event",
    "email": "email",
    "phone": "phone",
}
_TRUE = frozenset(("true", "t", "yes", "y", "1"))
_FALSE = frozenset(("false", "f", "no", "n", "0"))
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Column:
    """Where one CSV column goes: a top-level field or a path under traits/properties/..."""

    index: int
    name: str
    root: str | None  # None: a top-level field, path[0]
    path: tuple[str, ...]
    type: str

    @property
    def target(self) -> str:
        dotted = ".".join(self.path)
        return f"{self.root}.{dotted}" if self.root else dotted


def _default_target(name: str, kind: Kind) -> str:
    key = name.strip().replace("_", "").replace("-", "").replace(" ", "").lower()
    found = _DEFAULT_COLUMNS.get(key)
    if found == "event" and kind != "events":
        found = None
    return found or name.strip()


def guess_kind(header: list[str], mapping: dict[str, str]) -> Kind:
    """Events when a column is (or is mapped to) the event name, otherwise contacts."""
    has_event = any(_default_target(h, "events") == "event" for h in header)
    mapped_event = any(v.split(":")[0].strip() == "event" for v in mapping.values())
    return "events" if has_event or mapped_event else "contacts"


def _compile_column(index: int, name: str, target: str, kind: Kind) -> Column | None:
    target = target.strip()
    if target == "-":
        return None
    type_ = "string"
    if ":" in target:
        target, type_ = (p.strip() for p in target.rsplit(":", 1))
        if type_ not in TYPES:
            raise ValidationError(
                f"column {name!r}: unknown type {type_!r}; use one of {', '.join(TYPES)}",
                path=f"mapping.{name}",
            )
        target = target or _default_target(name, kind)
    if target in _TOP_FIELDS:
        if target == "event" and kind != "events":
            raise ValidationError(
                f"column {name!r}: contacts have no event", path=f"mapping.{name}"
            )
        return Column(index, name, None, (target,), type_)
    root, _, rest = target.partition(".")
    if root not in ("traits", "properties", "context") or not rest:
        root, rest = ("properties" if kind == "events" else "traits"), target
    if root == "traits" and kind == "events":
        root, rest = "context", f"traits.{rest}"
    parts = tuple(rest.split("."))
    if not all(parts):
        raise ValidationError(f"column {name!r}: bad target {target!r}", path=f"mapping.{name}")
    return Column(index, name, root, parts, type_)


def compile_columns(header: list[str], kind: Kind, mapping: dict[str, str]) -> list[Column]:
    """Where each column of `header` goes; raises ValidationError for a bad mapping."""
    unknown = sorted(set(mapping) - set(header))
    if unknown:
        raise ValidationError(
            f"the mapping names columns the file does not have: {', '.join(unknown)}",
            path="mapping",
        )
    targets = [mapping.get(name) or _default_target(name, kind) for name in header]
    user_id_taken = any(t.split(":")[0] == "userId" for t in targets)
    columns: list[Column] = []
    for index, (name, target) in enumerate(zip(header, targets, strict=True)):
        if name not in mapping and name.strip().lower() == "id" and not user_id_taken:
            target, user_id_taken = "userId", True
        column = _compile_column(index, name, target, kind)
        if column is not None:
            columns.append(column)
    for i, a in enumerate(columns):
        for b in columns[:i]:
            shorter = min(len(a.path), len(b.path))
            if a.root == b.root and a.path[:shorter] == b.path[:shorter]:
                raise ValidationError(
                    f"columns {b.name!r} and {a.name!r} both write {a.target}",
                    path=f"mapping.{a.name}",
                )
    if kind == "events" and not any(c.path == ("event",) and c.root is None for c in columns):
        raise ValidationError("an events file needs a column mapped to event", path="mapping")
    return columns


def _cast(value: str, type_: str) -> Any:
    """A cell as its mapped type; raises ValueError with a reason."""
    if type_ == "string":
        return value
    text = value
    if type_ == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{text[:40]!r} is not true or false")
    if type_ == "json":
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError(f"{text[:40]!r} is not JSON") from None
    if type_ == "int" or (type_ == "number" and _INT.fullmatch(text)):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text[:40]!r} is not an integer") from None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]!r} is not a finite number")
    return number


def build_message(row: list[str], columns: list[Column], kind: Kind) -> dict[str, Any]:
    """The Segment message of one CSV row; raises CellError for a cell of the wrong type."""
    message: dict[str, Any] = {"type": "track" if kind == "events" else "identify"}
    for c in columns:
        if c.index >= len(row):
            continue
        cell = row[c.index].strip()
        if not cell:
            continue
        try:
            value = _cast(cell, c.type)
        except ValueError as exc:
            raise CellError(c, str(exc)) from None
        if c.root is None:
            message[c.path[0]] = value
            continue
        node = message.setdefault(c.root, {})
        for part in c.path[:-1]:
            node = node.setdefault(part, {})
        node[c.path[-1]] = value
    return message


class CellError(Exception):
    """A cell that cannot be converted to its column's type."""

    def __init__(self, column: Column, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason
