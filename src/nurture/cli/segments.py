"""`nurture segments ...`, `nurture validate`, `nurture apply`, `nurture evaluate` and
`nurture worker`: thin over the segment service, the project and the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from nurture.cli.common import console, fail, running
from nurture.errors import NurtureError

segments_app = typer.Typer(help="Define, preview and inspect segments.", no_args_is_help=True)


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None


@segments_app.command("list")
def segments_list() -> None:
    """Every segment with its status and member count."""
    with running() as nurture:
        rows = nurture.segments.all()
    table = Table("key", "name", "source", "status", "members", "evaluated", "error")
    for r in rows:
        table.add_row(
            r["key"],
            r["name"],
            r["source"],
            r["status"],
            str(r["members"]),
            r["evaluatedAt"] or "",
            r["error"] or "",
        )
    console.print(table)


@segments_app.command("preview")
def segments_preview(
    key: str = typer.Argument(None, help="A saved segment; or give --file"),
    file: Path | None = typer.Option(None, "--file", "-f", help="A YAML segment or condition"),
    sample: int = typer.Option(10, min=0, max=100, help="How many members to show"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Count and sample of who matches now, without saving anything."""
    if (key is None) == (file is None):
        raise fail("give a segment key or --file, not both")
    with running() as nurture:
        if file is not None:
            data = _load(file)
            where = data.get("where", data) if isinstance(data, dict) else data
            preview = nurture.segments.preview(where, sample=sample)
        else:
            preview = nurture.segments.preview_key(key, sample=sample)
    if as_json:
        print(json.dumps(preview.to_dict()))
        return
    console.print(f"[bold]{preview.count}[/] contacts match")
    table = Table("id", "userId", "email", "name")
    for c in preview.sample:
        table.add_row(str(c["id"]), c["userId"] or "", c["email"] or "", str(c["name"] or ""))
    if preview.sample:
        console.print(table)


@segments_app.command("members")
def segments_members(
    key: str,
    limit: int = typer.Option(100, min=1, max=1000, help="At most this many"),
) -> None:
    """Current members of a segment with when each entered."""
    with running() as nurture:
        page = nurture.segments.members(key, limit=limit)
    table = Table("contact", "entered")
    for item in page["items"]:
        table.add_row(str(item["contactId"]), item["enteredAt"])
    console.print(table)


@segments_app.command("evaluate")
def segments_evaluate(
    key: str = typer.Argument(None, help="One segment; all when omitted"),
) -> None:
    """Re-evaluate a segment (or everything) for every contact now."""
    with running() as nurture:
        results = (
            [nurture.segments.evaluate(key)] if key else nurture.engine.evaluate_all().segments
        )
    table = Table("segment", "members", "entered", "exited", "seconds", "error")
    for r in results:
        table.add_row(
            r.key, str(r.members), str(r.entered), str(r.exited), f"{r.seconds:.2f}", r.error or ""
        )
    console.print(table)


def validate_command() -> None:
    """Check the project files (segments/, traits/, lifecycle/, scoring/)."""
    with running() as nurture:
        try:
            found = nurture.project.validate()
        except NurtureError as exc:
            raise fail(exc) from None
    console.print(f"{len(found)} definitions are valid")


def apply_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan, change nothing"),
) -> None:
    """Make the stored definitions match the project files (shows the plan first)."""
    with running() as nurture:
        plan = nurture.project.plan() if dry_run else nurture.project.apply()
        for line in plan.lines():
            console.print(line)
        console.print(
            f"{len(plan.add)} to add, {len(plan.change)} to change, {len(plan.remove)} to remove, "
            f"{plan.unchanged} unchanged" + (" (dry run)" if dry_run else "")
        )
        if plan and not dry_run:
            report = nurture.engine.evaluate_all()
            failed = [r for r in report.segments if r.error]
            for r in failed:
                console.print(f"[red]segment {r.key} failed:[/] {r.error}")


stages_app = typer.Typer(help="Lifecycle stages: counts and moves.", no_args_is_help=True)
scores_app = typer.Typer(help="Lead scores, explained.", no_args_is_help=True)


@stages_app.command("counts")
def stages_counts(model: str) -> None:
    """How many contacts are in each stage of MODEL now."""
    with running() as nurture:
        counts = nurture.lifecycle.counts(model)
    table = Table("stage", "contacts")
    for stage, n in counts.items():
        table.add_row(stage, str(n))
    console.print(table)


@stages_app.command("moves")
def stages_moves(
    model: str,
    from_stage: str | None = typer.Option(None, "--from", help="Only moves out of this stage"),
    to_stage: str | None = typer.Option(None, "--to", help="Only moves into this stage"),
    since: str | None = typer.Option(None, "--since", help="A date, date-time or '7d ago'"),
    limit: int = typer.Option(1000, min=1, max=10000, help="At most this many"),
) -> None:
    """Who moved between stages of MODEL, e.g. --from engaged --to at_risk --since '7d ago'."""
    from nurture.conditions.durations import parse_date_ref
    from nurture.store.types import from_microseconds, to_microseconds

    with running() as nurture:
        start = None
        if since:
            try:
                ref = parse_date_ref(since)
            except ValueError as exc:
                raise fail(f"--since: {exc}") from None
            start = from_microseconds(ref.resolve_us(to_microseconds(nurture.clock.now())))
        rows = nurture.lifecycle.moves(
            model, from_stage=from_stage, to_stage=to_stage, since=start, limit=limit
        )
    table = Table("contact", "from", "to", "at")
    for r in rows:
        table.add_row(str(r["contactId"]), r["from"] or "", r["to"], r["at"])
    console.print(table)
    console.print(f"{len(rows)} moves")


@scores_app.command("explain")
def scores_explain(
    contact_id: int,
    model: str = typer.Option("lead", "--model", help="The score model"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """A contact's score now: which rules gave how many points, and when."""
    with running() as nurture:
        result = nurture.lifecycle.explain(contact_id, model)
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"score [bold]{result['score']}[/] ({result['temperature']})")
    table = Table("rule", "points", "count", "last")
    for part in result["explanation"]:
        table.add_row(
            part["rule"], str(part["points"]), str(part["count"]), str(part.get("lastAt") or "")
        )
    console.print(table)
