"""What every command shares: settings loading with readable errors, a console."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from nurture.core import Nurture
from nurture.errors import NurtureError
from nurture.settings import Settings, load_settings

console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def fail(error: NurtureError | str, code: int = 2) -> typer.Exit:
    """Print an error the operator can act on; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except NurtureError as exc:
        raise fail(exc) from None


@contextmanager
def running() -> Iterator[Nurture]:
    """A started Nurture (migrated, writer running) for the length of a command."""
    nurture = Nurture(settings())
    try:
        nurture.start()
    except NurtureError as exc:
        raise fail(exc) from None
    try:
        yield nurture
    except NurtureError as exc:
        raise fail(exc) from None
    finally:
        nurture.stop()
