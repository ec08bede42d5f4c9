"""`nurture messages …`: the outbox — list, show, counts, retry."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from nurture.cli.common import console, fail, running
from nurture.errors import NurtureError
from nurture.messages.service import MessageService

messages_app = typer.Typer(
    help="Messages: the outbox and why each one waits.", no_args_is_help=True
)


def _call(action: Callable[[MessageService], Any]) -> Any:
    with running() as nurture:
        try:
            return action(nurture.messages)
        except NurtureError as exc:
            raise fail(exc) from None


@messages_app.command("list")
def list_messages(
    status: str | None = typer.Option(None, help="queued, sending, sent, skipped, failed, ..."),
    contact: int | None = typer.Option(None, help="Only this contact's messages"),
    journey: str | None = typer.Option(None, help="Only this journey's messages"),
    rule: str | None = typer.Option(None, help="Only those this rule held (e.g. quiet_hours)"),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Messages, newest first, with the rule that held or skipped each and why."""
    rows = _call(
        lambda s: s.list(status=status, contact_id=contact, journey=journey, rule=rule, limit=limit)
    )
    table = Table("id", "contact", "journey/step", "channel", "status", "rule", "reason")
    for m in rows:
        where = f"{m['journey_key']}/{m['step']}" if m["journey_key"] else "-"
        table.add_row(
            str(m["id"]), str(m["contact_id"]), where, m["channel"], m["status"],
            m["rule"] or "", (m["reason"] or "")[:80],
        )  # fmt: skip
    console.print(table)


@messages_app.command("show")
def show(message_id: int) -> None:
    """One message as JSON: payload, status, provider answer, feedback."""
    console.print_json(json.dumps(_call(lambda s: s.get(message_id))))


@messages_app.command("counts")
def counts() -> None:
    """Messages by status."""
    table = Table("status", "messages")
    for status, n in sorted(_call(lambda s: s.counts()).items()):
        table.add_row(status, str(n))
    console.print(table)


@messages_app.command("retry")
def retry(message_id: int) -> None:
    """Queue a failed or skipped message again (the sending rules apply again)."""
    message = _call(lambda s: s.retry(message_id))
    console.print(f"message {message['id']} is {message['status']}")
