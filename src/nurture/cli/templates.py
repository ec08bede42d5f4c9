"""`nurture templates …`: list, validate, preview. Templates are written in the project's
templates/ folder or through the admin API."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from nurture.cli.common import console, fail, running
from nurture.errors import NurtureError

templates_app = typer.Typer(
    help="Message templates: list, validate, preview.", no_args_is_help=True
)


@templates_app.command("list")
def list_templates() -> None:
    """Every template (stored and files): source, channels, locales, problem."""
    with running() as nurture:
        found = nurture.templates.all()
    table = Table("template", "source", "channels", "locales", "problem")
    for t in found:
        source = t.get("source", "") + (" (over a file)" if t.get("shadows_file") else "")
        table.add_row(
            t["key"], source, ", ".join(t.get("channels", [])), ", ".join(t.get("locales", [])),
            t.get("error") or "",
        )  # fmt: skip
    console.print(table)


@templates_app.command("validate")
def validate() -> None:
    """Check every template file in templates/: each problem with its file, field, line."""
    with running() as nurture:
        found = nurture.templates.validate_files()
    bad = 0
    for key, problems in found.items():
        for problem in problems:
            bad += 1
            console.print(f"[red]✗[/] {key}: {problem}")
        if not problems:
            console.print(f"[green]✓[/] {key}")
    if bad:
        raise fail(f"{bad} problem{'s' if bad > 1 else ''} in templates", code=2)
    console.print(f"{len(found)} template{'s' if len(found) != 1 else ''} valid")


@templates_app.command("preview")
def preview(
    key: str,
    contact: int = typer.Option(..., "--contact", help="Render with this contact's data"),
    locale: str | None = typer.Option(None, "--locale", help="Instead of the contact's locale"),
    channel: str | None = typer.Option(None, "--channel", help="email, sms, push or voice"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Render KEY for a real contact, as it would be sent."""
    with running() as nurture:
        try:
            shown = nurture.templates.preview(
                key, contact_id=contact, channel=channel, locale=locale
            )
        except NurtureError as exc:
            raise fail(exc) from None
    if as_json:
        console.print_json(json.dumps(shown))
        return
    console.print(f"[bold]{key}[/] {shown['channel']}, variant {shown['variant']}")
    for name, value in shown["content"].items():
        if name == "html":
            continue  # long and unreadable in a terminal; --json has it
        console.print(f"[bold]{name}:[/] {value}", markup=True, highlight=False)
