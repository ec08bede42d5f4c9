"""The `nurture` command line: thin Typer commands over the services."""
