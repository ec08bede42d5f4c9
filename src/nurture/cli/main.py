"""`nurture`: serve, worker, migrate, config, keys, rejected, import, segments, validate,
apply."""

from __future__ import annotations

import json

import typer
import uvicorn
from rich.table import Table

from nurture.api.protocol import HttpProtocol
from nurture.cli import (
    backtest,
    consents,
    importer,
    journeys,
    messages,
    report,
    report_clv,
    report_events,
    report_experiments,
    report_journeys,
    segments,
    templates,
    worker,
)
from nurture.cli.common import console, fail, running, settings
from nurture.errors import NurtureError

app = typer.Typer(
    help="Nurture: lifecycle marketing automation. Settings: NURTURE_* or nurture.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
rejected_app = typer.Typer(help="Inspect and replay rejected input.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(rejected_app, name="rejected")
app.add_typer(segments.segments_app, name="segments")
app.add_typer(segments.stages_app, name="stages")
app.add_typer(segments.scores_app, name="scores")
app.add_typer(journeys.journeys_app, name="journeys")
app.add_typer(templates.templates_app, name="templates")
app.add_typer(messages.messages_app, name="messages")
app.add_typer(consents.consents_app, name="consents")
app.add_typer(consents.suppressions_app, name="suppressions")
app.add_typer(report.report_app, name="report")
# The report commands register themselves on report.report_app when imported.
_REPORTS = (report_clv, report_events, report_experiments, report_journeys)
app.command("import")(importer.import_command)
app.command("validate")(segments.validate_command)
app.command("apply")(segments.apply_command)
app.command("worker")(worker.worker_command)
app.command("backtest")(backtest.backtest_command)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Listen address (default: NURTURE_HOST)"),
    port: int | None = typer.Option(None, help="Listen port (default: NURTURE_PORT)"),
) -> None:
    """Run the HTTP API (ingest and admin) on the configured database."""
    s = settings()
    with running() as nurture:
        if not nurture.keys.any_exist():
            _, write = nurture.keys.create("write", "created by first serve")
            _, admin = nurture.keys.create("admin", "created by first serve")
            console.print("[bold]No API keys yet; created these (shown only once):[/]")
            console.print(f"  write key: [green]{write}[/]   (Segment SDK write key)")
            console.print(f"  admin key: [green]{admin}[/]   (admin API, Bearer)")
    processes = s.api_processes if not s.is_sqlite else 1
    console.print(
        f"Nurture on http://{host or s.host}:{port or s.port}  "
        f"database: {s.masked()['database_url']}  docs: /docs"
    )
    uvicorn.run(
        "nurture.api.factory:build",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        workers=processes if processes > 1 else None,
        log_level=s.log_level,
        access_log=False,
        http=HttpProtocol,  # a body the process has no memory for: 503, not 400
    )


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (also done by every command that needs it)."""
    with running() as nurture:
        console.print(f"database at the newest schema ({nurture.db.backend})")


@config_app.command("show")
def config_show(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Print the effective settings, secrets masked."""
    values = settings().masked()
    if as_json:
        console.print_json(json.dumps(values, default=str))
        return
    table = Table("setting", "value", title="Effective settings")
    for name, value in values.items():
        table.add_row(f"NURTURE_{name.upper()}", "" if value is None else str(value))
    console.print(table)


@keys_app.command("create")
def keys_create(
    kind: str = typer.Option(..., "--kind", help="write (ingest) or admin (everything)"),
    name: str = typer.Option("", "--name", help="A note for whom the key is"),
) -> None:
    """Create a key and print it once; only its hash is stored."""
    with running() as nurture:
        try:
            key, secret = nurture.keys.create(kind, name)
        except NurtureError as exc:
            raise fail(exc) from None
    console.print(f"{key.kind} key {key.id}: [green]{secret}[/]")
    console.print("Store it now: it cannot be shown again.")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefixes only)."""
    with running() as nurture:
        keys = nurture.keys.list_keys()
    table = Table("id", "kind", "prefix", "name", "created", "revoked")
    for k in keys:
        table.add_row(
            str(k.id),
            k.kind,
            k.prefix + "…",
            k.name,
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="The id from `nurture keys list`")) -> None:
    """Revoke a key."""
    with running() as nurture:
        nurture.keys.revoke(key_id)
    console.print(f"key {key_id} revoked")


@rejected_app.command("list")
def rejected_list(
    all_: bool = typer.Option(False, "--all", help="Include input already replayed"),
    code: str | None = typer.Option(None, help="Only this error code"),
    limit: int = typer.Option(50, help="At most this many"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines with the raw input"),
) -> None:
    """Show rejected input with its error."""
    with running() as nurture:
        rows = nurture.rejected.page(pending_only=not all_, code=code, limit=limit)
        pending = nurture.rejected.count()
    if as_json:
        for row in rows:
            print(json.dumps(row.to_dict()))
        return
    table = Table("id", "received", "source", "code", "path", "message", "messageId", "replayed")
    for r in rows:
        table.add_row(
            str(r.id),
            r.received_at.isoformat(timespec="seconds"),
            r.source,
            r.code,
            r.path or "",
            r.message,
            r.message_id or "",
            r.replay_result or "",
        )
    console.print(table)
    console.print(f"{pending} pending")


@rejected_app.command("replay")
def rejected_replay(
    ids: list[int] = typer.Argument(None, help="Ids to replay; all pending when none given"),
    code: str | None = typer.Option(None, help="Only pending input with this error code"),
) -> None:
    """Re-ingest rejected input after a fix; what still fails stays listed."""
    with running() as nurture:
        report = nurture.rejected.replay(ids or None, code=code)
    console.print(
        f"accepted {report.accepted}, duplicates {report.duplicates}, "
        f"still rejected {report.still_rejected}"
    )
