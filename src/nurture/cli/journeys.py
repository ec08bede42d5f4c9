"""`nurture journeys …`: list, show, publish, pause, resume, archive, enrol, enrolments,
retry. Journeys are written in project files (`nurture apply`) or through the API."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from nurture.cli.common import console, fail, running
from nurture.errors import NurtureError
from nurture.journeys.service import JourneyService

journeys_app = typer.Typer(help="Journeys: status, versions, enrolments.", no_args_is_help=True)


def _call(action: Callable[[JourneyService], Any]) -> Any:
    with running() as nurture:
        try:
            return action(nurture.journeys)
        except NurtureError as exc:
            raise fail(exc) from None


def _summary(journey: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(journey["enrolments"].items())) or "none"
    console.print(
        f"[bold]{journey['key']}[/] {journey['status']}, version {journey['version']}"
        + (" (unpublished draft)" if journey["draft"] else "")
        + f"; enrolments: {counts}"
    )


@journeys_app.command("list")
def list_journeys() -> None:
    """Every journey with its status, version and enrolments by status."""
    table = Table("journey", "status", "version", "draft", "active", "converted", "failed")
    for j in _call(lambda s: s.all()):
        n = j["enrolments"]
        table.add_row(
            j["key"], j["status"], str(j["version"] or "-"), "yes" if j["draft"] else "",
            str(n.get("active", 0)), str(n.get("converted", 0)), str(n.get("failed", 0)),
        )  # fmt: skip
    console.print(table)


@journeys_app.command("show")
def show(key: str, version: int | None = typer.Option(None, help="This version")) -> None:
    """The published definition (YAML-ready JSON) of KEY."""
    from nurture.journeys.model import dump_journey

    journey = _call(lambda s: s.definition(key, version))
    console.print_json(json.dumps(dump_journey(journey)))


@journeys_app.command("publish")
def publish(key: str) -> None:
    """Publish KEY's draft as its next version."""
    _summary(_call(lambda s: s.publish(key)))


@journeys_app.command("pause")
def pause(key: str) -> None:
    """Hold every enrolment of KEY; nobody enters while paused."""
    _summary(_call(lambda s: s.pause(key)))


@journeys_app.command("resume")
def resume(key: str) -> None:
    _summary(_call(lambda s: s.resume(key)))


@journeys_app.command("archive")
def archive(key: str) -> None:
    """End every live enrolment of KEY; nobody enters again."""
    _summary(_call(lambda s: s.archive(key)))


@journeys_app.command("enrol")
def enrol(
    key: str,
    contact_id: int,
    idempotency_key: str | None = typer.Option(None, help="Repeat-safe entry key"),
) -> None:
    """Enter CONTACT_ID into KEY (entry rules apply)."""
    result = _call(lambda s: s.enrol(key, contact_id, idempotency_key=idempotency_key))
    console.print(f"{result.status}" + (f": {result.reason}" if result.reason else ""))


@journeys_app.command("enrolments")
def enrolments(
    key: str,
    status: str | None = typer.Option(None, help="active, completed, converted, exited, failed"),
    limit: int = typer.Option(100, min=1, max=1000),
) -> None:
    """KEY's enrolments; `--status failed` lists parked ones with their errors."""
    table = Table("id", "contact", "status", "step", "due", "error / reason")
    for e in _call(lambda s: s.enrolments(key, status=status, limit=limit)):
        table.add_row(
            str(e["id"]), str(e["contactId"]), e["status"], e["step"] or "",
            e["dueAt"] or "", e["lastError"] or e["endReason"] or "",
        )  # fmt: skip
    console.print(table)


@journeys_app.command("retry")
def retry(enrolment_id: int) -> None:
    """Put a parked (failed) enrolment back on its step, due now."""
    e = _call(lambda s: s.retry(enrolment_id))
    console.print(f"enrolment {e['id']} is {e['status']} at step {e['step']}")
