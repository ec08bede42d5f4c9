"""The project as code: definitions kept as YAML files in git, validated and applied
like infrastructure (`nurture validate`, `nurture apply`, which shows its plan).

    segments/*.yaml    segments
    traits/*.yaml      computed traits
    lifecycle/*.yaml   lifecycle stage models
    scoring/*.yaml     lead-scoring models
    journeys/*.yaml    journeys (applying publishes a new version when one changed)

A file holds one definition (a mapping with `key`) or a list of them. Applying makes
the stored definitions of source `file` equal to the files: new ones are added,
changed ones replaced, those whose file is gone removed. Definitions made through the
admin API are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection

from nurture.clock import Clock
from nurture.errors import ValidationError
from nurture.journeys import store as journey_store
from nurture.journeys.model import dump_journey, parse_journey
from nurture.journeys.service import JourneyService
from nurture.messages.templates import TemplateService
from nurture.segments.definitions import DefinitionStore, StoredDefinition
from nurture.segments.registry import Registry
from nurture.store import Database
from nurture.store import tables as t

JOURNEYS = "journeys"
FOLDERS = {
    "segments": "segment",
    "traits": "computed",
    "lifecycle": "stage_model",
    "scoring": "score_model",
}


@dataclass
class FileDefinition:
    kind: str
    key: str
    name: str
    body: dict[str, Any]
    origin: str  # file path and position, for error messages


@dataclass
class Plan:
    add: list[FileDefinition] = field(default_factory=list)
    change: list[FileDefinition] = field(default_factory=list)
    remove: list[StoredDefinition] = field(default_factory=list)
    archive: list[str] = field(default_factory=list)  # journeys whose file is gone
    unchanged: int = 0

    def __bool__(self) -> bool:
        return bool(self.add or self.change or self.remove or self.archive)

    def lines(self) -> list[str]:
        out = [f"+ {d.kind} {d.key}  ({d.origin})" for d in self.add]
        out += [f"~ {d.kind} {d.key}  ({d.origin})" for d in self.change]
        out += [f"- {d.kind} {d.key}" for d in self.remove]
        out += [f"- journey {key}  (archived: its file is gone)" for key in self.archive]
        return out


class Project:
    def __init__(
        self,
        folder: Path,
        db: Database,
        clock: Clock,
        journeys: JourneyService | None = None,
        templates: TemplateService | None = None,
    ) -> None:
        self.folder = folder
        self.db = db
        self.clock = clock
        self.journeys = journeys
        self.templates = templates

    def read(self) -> list[FileDefinition]:
        """Every definition in the project files; raises ValidationError naming the file
        and field of the first problem (all files are checked together)."""
        found: list[FileDefinition] = []
        seen: dict[tuple[str, str], str] = {}
        for folder, kind in {**FOLDERS, JOURNEYS: "journey"}.items():
            directory = self.folder / folder
            if not directory.is_dir():
                continue
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                rel = f"{folder}/{path.name}"
                try:
                    data = yaml.safe_load(path.read_text(encoding="utf-8"))
                except yaml.YAMLError as exc:
                    raise ValidationError(f"not valid YAML: {exc}", path=rel) from None
                items = data if isinstance(data, list) else [data]
                for index, item in enumerate(items):
                    origin = f"{rel}[{index}]" if isinstance(data, list) else rel
                    if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                        raise ValidationError("expected a mapping with a `key`", path=origin)
                    key = item["key"]
                    if (kind, key) in seen:
                        raise ValidationError(
                            f"{kind} {key!r} is also defined in {seen[(kind, key)]}", path=origin
                        )
                    seen[(kind, key)] = origin
                    body = (
                        dict(item) if kind == "journey" else
                        {k: v for k, v in item.items() if k != "key"}
                    )  # fmt: skip
                    found.append(FileDefinition(kind, key, str(item.get("name", "")), body, origin))
        return found

    def validate(self) -> list[FileDefinition]:
        """Read the files and check every definition with the others in force."""
        found = self.read()
        files = [d for d in found if d.kind != "journey"]
        with self.db.read() as conn:
            others = [d for d in DefinitionStore.all(conn) if d.source != "file"]
        now = self.clock.now()
        trial = others + [
            StoredDefinition(
                d.kind, d.key, d.name, _json(d.body), "file", "active", None, now, now, None
            )
            for d in files
        ]
        registry = Registry.build(trial)
        for d in files:
            problem = registry.problems.get((d.kind, d.key))
            if problem:
                raise ValidationError(problem, path=d.origin, code="invalid_definition")
        journeys = [d for d in found if d.kind == "journey"]
        if journeys:
            self._validate_journeys(journeys, trial, registry)
        if self.templates is not None:
            # Templates are read from their files when sent (nothing to apply), so this is
            # where a broken one is caught before a journey needs it.
            for problems in self.templates.validate_files().values():
                if problems:
                    raise problems[0]
        return found

    def _validate_journeys(
        self, journeys: list[FileDefinition], trial: list[StoredDefinition], registry: Registry
    ) -> None:
        if self.journeys is None:
            raise ValidationError("journeys need the journey service", path=JOURNEYS)
        with self.db.read() as conn:
            catalog = self.journeys.catalog(conn)
        catalog.segments = {d.key for d in trial if d.kind == "segment"}
        catalog.score_models = {d.key for d in trial if d.kind == "score_model"}
        catalog.reference_problem = registry.reference_problem
        for d in journeys:
            _, problems = self.journeys.validate(_json(d.body), path=d.origin, catalog=catalog)
            if problems:
                raise problems[0]

    def plan(self) -> Plan:
        found = self.validate()
        files = [d for d in found if d.kind != "journey"]
        plan = Plan()
        with self.db.read() as conn:
            stored = {(d.kind, d.key): d for d in DefinitionStore.all(conn)}
            self._plan_journeys(conn, [d for d in found if d.kind == "journey"], plan)
        wanted = {(d.kind, d.key) for d in files}
        for d in files:
            old = stored.get((d.kind, d.key))
            if old is None:
                plan.add.append(d)
            elif old.body != _json(d.body) or old.name != d.name or old.source != "file":
                plan.change.append(d)
            else:
                plan.unchanged += 1
        plan.remove = [d for k, d in stored.items() if d.source == "file" and k not in wanted]
        return plan

    def apply(self) -> Plan:
        """Make the stored file definitions equal to the files; returns what changed."""
        plan = self.plan()
        now = self.clock.now()
        with self.db.write() as conn:
            for d in [*plan.add, *plan.change]:
                if d.kind == "journey":
                    continue
                DefinitionStore.put(
                    conn, d.kind, d.key, _json(d.body), name=d.name, source="file", now=now
                )
            for old in plan.remove:
                DefinitionStore.delete(conn, old.kind, old.key)
                if old.kind == "segment":
                    m = t.segment_memberships.c
                    conn.execute(t.segment_memberships.delete().where(m.segment_key == old.key))
        # Journeys after the definitions they may name; each publishes in its own step.
        if self.journeys is not None:
            for d in [*plan.add, *plan.change]:
                if d.kind == "journey":
                    self.journeys.save(_json(d.body), source="file", publish=True, check=False)
            for key in plan.archive:
                self.journeys.archive(key)
        return plan

    def _plan_journeys(self, conn: Connection, files: list[FileDefinition], plan: Plan) -> None:
        rows = {r.key: r for r in journey_store.all_journeys(conn)}
        for d in files:
            row = rows.get(d.key)
            if row is None or row.status == "archived":
                plan.add.append(d)
                continue
            body = dump_journey(parse_journey(_json(d.body)))
            current = journey_store.version_body(conn, d.key, row.version) if row.version else None
            if current != body or row.source != "file":
                plan.change.append(d)
            else:
                plan.unchanged += 1
        wanted = {d.key for d in files}
        plan.archive = [
            k for k, r in rows.items() if r.source == "file" and r.status != "archived"
            and k not in wanted
        ]  # fmt: skip


def _json(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the database stores it (YAML dates become ISO strings)."""
    import json

    return dict(json.loads(json.dumps(body, default=_iso)))


def _iso(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise TypeError(f"{type(value).__name__} is not a YAML value Nurture reads")
