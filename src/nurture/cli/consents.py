"""`nurture consents show` and `nurture suppressions check|add|remove|list`."""

from __future__ import annotations

import typer
from rich.table import Table

from nurture.cli.common import console, fail, running
from nurture.errors import NurtureError
from nurture.messages.suppression import guess_kind

consents_app = typer.Typer(help="Show a contact's consents and their proof.", no_args_is_help=True)
suppressions_app = typer.Typer(
    help="Check, add, lift and count suppressed addresses.", no_args_is_help=True
)

_KIND = typer.Option(None, "--kind", help="email or phone (default: email if it has @)")


@consents_app.command("show")
def consents_show(contact: int = typer.Argument(..., help="The contact id")) -> None:
    """Print a contact's current consents and every change with its proof."""
    with running() as nurture:
        doc = nurture.consent.document(contact)
    table = Table("channel", "topic", "state", "since", "source", title="Current")
    for c in doc["current"]:
        table.add_row(
            c["channel"], c["topic"], c["state"], c["recorded_at"].isoformat(), c["source"] or ""
        )
    console.print(table)
    history = Table("when", "channel", "topic", "state", "source", "ip", "wording", title="History")
    for h in doc["history"]:
        history.add_row(
            h["recorded_at"].isoformat(),
            h["channel"],
            h["topic"],
            h["state"],
            h["source"] or "",
            h["ip"] or "",
            h["wording"] or "",
        )
    console.print(history)


@suppressions_app.command("check")
def suppressions_check(
    address: str = typer.Argument(..., help="An email or phone number"),
    kind: str | None = _KIND,
) -> None:
    """Say whether an address is suppressed, and why (exit code 1 if it is)."""
    with running() as nurture:
        entry = nurture.suppressions.lookup(kind or guess_kind(address), address)  # type: ignore[arg-type]
    if entry is None:
        console.print(f"{address}: not suppressed")
        return
    detail = f" ({entry.detail})" if entry.detail else ""
    console.print(
        f"{address}: suppressed since {entry.created_at:%Y-%m-%d}, {entry.reason}{detail}"
    )
    raise typer.Exit(1)


@suppressions_app.command("add")
def suppressions_add(
    address: str = typer.Argument(..., help="An email or phone number"),
    kind: str | None = _KIND,
    reason: str = typer.Option("manual", "--reason", help="manual, bounced, complained or stop"),
    detail: str | None = typer.Option(None, "--detail", help="Why, or who asked"),
) -> None:
    """Suppress an address."""
    with running() as nurture:
        added = nurture.suppressions.add(
            kind or guess_kind(address),  # type: ignore[arg-type]
            address,
            reason,  # type: ignore[arg-type]
            detail,
        )
    console.print(f"{address}: " + ("suppressed" if added else "already suppressed"))


@suppressions_app.command("remove")
def suppressions_remove(
    address: str = typer.Argument(..., help="An email or phone number"),
    kind: str | None = _KIND,
) -> None:
    """Lift an address's suppression (never an erased contact's)."""
    with running() as nurture:
        try:
            lifted = nurture.suppressions.remove(
                kind or guess_kind(address),  # type: ignore[arg-type]
                address,
                reasons=("stop", "manual", "bounced", "complained"),
            )
        except NurtureError as exc:
            raise fail(exc) from None
    if not lifted:
        raise fail(f"{address} is not suppressed", code=1)
    console.print(f"{address}: no longer suppressed")


@suppressions_app.command("list")
def suppressions_list(
    limit: int = typer.Option(20, "--limit", help="How many of the newest entries to show"),
) -> None:
    """Count suppressed addresses by kind and reason, and show the newest (as hashes)."""
    with running() as nurture:
        counts = nurture.suppressions.counts()
        recent = nurture.suppressions.recent(limit)
    table = Table("kind", "reason", "addresses", title="Suppressed")
    for (kind, reason), n in sorted(counts.items()):
        table.add_row(kind, reason, str(n))
    console.print(table)
    newest = Table("hash", "kind", "reason", "since", "detail", title="Newest")
    for e in recent:
        newest.add_row(
            e.hash[:12] + "…", e.kind, e.reason, e.created_at.isoformat(), e.detail or ""
        )
    console.print(newest)
