"""Every benchmark, one after another (never at once: the machine has 2 cores), as a table.

Run through `bench/run`; sizes come from flags or NURTURE_BENCH_* variables:

    bench/run                                  # defaults: 200k HTTP events, 1M imported
    bench/run --http-events 50000 --only http-sqlite-normal
    NURTURE_BENCH_IMPORT_EVENTS=10000000 bench/run --only import-sqlite
    bench/run --profile /tmp/ingest.raw        # adds a py-spy profile of SQLite ingest
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from bench.harness import Result, log
from bench.import_bench import run_import
from bench.ingest import run_http, run_sink, summarize_profile

BENCHMARKS = (
    "sink",
    "http-sqlite-full",
    "http-sqlite-normal",
    "http-postgresql",
    "import-sqlite",
    "import-postgresql",
)
DEFAULT = ("sink", "http-sqlite-full", "http-sqlite-normal", "http-postgresql", "import-sqlite")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"NURTURE_BENCH_{name}", default))


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[], Result]]]:
    """The benchmarks to run, in order, as (name, thunk)."""
    http = {"clients": args.clients, "connections": args.connections, "batch": args.batch}
    runs: dict[str, Callable[[], Result]] = {
        "sink": lambda: run_sink(args.http_events, **http),
        "http-sqlite-full": lambda: run_http(
            "sqlite", args.http_events, synchronous="FULL", **http
        ),
        "http-sqlite-normal": lambda: run_http(
            "sqlite", args.http_events, synchronous="NORMAL", **http
        ),
        "http-postgresql": lambda: run_http(
            "postgresql", args.http_events, api_processes=args.api_processes, **http
        ),
        "import-sqlite": lambda: run_import("sqlite", args.import_events),
        "import-postgresql": lambda: run_import("postgresql", args.import_events),
    }
    return [(name, runs[name]) for name in args.only]


def table(results: list[Result]) -> Table:
    """The results as a Rich table."""
    out = Table(title="Nurture benchmarks")
    for column in ("benchmark", "backend", "events", "seconds", "events/s", "peak RSS"):
        out.add_column(
            column, justify="right" if column not in ("benchmark", "backend") else "left"
        )
    out.add_column("target")
    out.add_column("met?")
    for r in results:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[r.met]
        out.add_row(
            r.benchmark,
            r.backend,
            f"{r.events:,}",
            f"{r.seconds:.1f}",
            f"{r.events_per_s:,.0f}",
            f"{r.peak_rss_mb:,.0f} MB" if r.peak_rss_mb else "-",
            r.target,
            met,
        )
    return out


def markdown(results: list[Result]) -> str:
    """The results as a Markdown table (for bench/RESULTS.md)."""
    lines = [
        "| benchmark | backend | events | seconds | events/s | peak RSS | target | met? |",
        "|---|---|--:|--:|--:|--:|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        rss = f"{r.peak_rss_mb:,.0f} MB" if r.peak_rss_mb else "-"
        lines.append(
            f"| {r.benchmark} | {r.backend} | {r.events:,} | {r.seconds:.1f} | "
            f"{r.events_per_s:,.0f} | {rss} | {r.target} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print the table (and notes)."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--http-events", type=int, default=_env_int("HTTP_EVENTS", 200_000))
    parser.add_argument("--import-events", type=int, default=_env_int("IMPORT_EVENTS", 1_000_000))
    parser.add_argument("--clients", type=int, default=_env_int("CLIENTS", 4))
    parser.add_argument("--connections", type=int, default=_env_int("CONNECTIONS", 4))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--api-processes", type=int, default=_env_int("API_PROCESSES", 2))
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=list(DEFAULT),
        metavar="NAME",
        help=f"some of: {', '.join(BENCHMARKS)} (default: all but import-postgresql)",
    )
    parser.add_argument("--profile", type=Path, help="also profile SQLite ingest with py-spy")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)

    started = datetime.now(UTC)
    results: list[Result] = []
    for name, run in plan(args):
        log(f"running {name}")
        result = run()
        log(f"{name}: {result.events_per_s:,.0f} events/s; " + "; ".join(result.notes))
        results.append(result)
    profile_text = None
    if args.profile:
        log("running the profiled SQLite ingest (not in the table: py-spy slows it)")
        run_http(
            "sqlite",
            args.http_events,
            clients=args.clients,
            connections=args.connections,
            batch=args.batch,
            profile=args.profile,
        )
        if args.profile.exists():
            profile_text = summarize_profile(args.profile)

    console = Console(width=160)
    console.print(table(results))
    for r in results:
        console.print(f"[bold]{r.benchmark} ({r.backend})[/]: " + "; ".join(r.notes))
    if args.markdown:
        print("\n" + markdown(results))
    if profile_text:
        print("\n" + profile_text)
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "started": started.isoformat(),
                    "command": shlex.join(["bench/run", *(argv or sys.argv[1:])]),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "results": [r.to_dict() for r in results],
                    "profile": profile_text,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
