"""`nurture import` (filled in with the importer)."""

from __future__ import annotations

from pathlib import Path

import typer


def import_command(file: Path = typer.Argument(..., help="JSONL or CSV file")) -> None:
    """Import a file of Segment messages (JSONL) or contacts/events (CSV)."""
    raise typer.Exit(1)
