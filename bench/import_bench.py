"""The bulk import benchmark: time `nurture import FILE` on the reference workload.

Generates (and caches) a JSONL file with the first N messages of the reference world,
runs `nurture import FILE --json` as a subprocess on a fresh database, samples the peak
RSS of its process tree, and counts the stored events afterwards.

Events/s are end to end: the whole command, start-up and migrations included (the
importer's own figure, which leaves those out, is in the notes).

    python -m bench.import_bench --events 1000000
    python -m bench.import_bench --backend postgresql --gzip
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bench.harness import (
    NURTURE,
    Result,
    RssSampler,
    fresh_database,
    log,
    nurture_env,
    reference_file,
)

TARGET_EVENTS_PER_S = 50_000
TARGET_RSS_MB = 500
TARGET_AT_EVENTS = 10_000_000


def _gzipped(path: Path) -> Path:
    target = path.with_suffix(".jsonl.gz")
    if not target.exists():
        partial = target.with_suffix(".part")
        with path.open("rb") as src, gzip.open(partial, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        partial.rename(target)
    return target


def run_import(
    backend: str = "sqlite",
    events: int = 1_000_000,
    *,
    compressed: bool = False,
    synchronous: str = "FULL",
) -> Result:
    """`nurture import` of `events` reference messages into a fresh database."""
    path = reference_file(events)
    if compressed:
        path = _gzipped(path)
    label = f"sqlite synchronous={synchronous}" if backend == "sqlite" else backend
    if compressed:
        label += ", .jsonl.gz"
    with fresh_database(backend) as db:
        env = nurture_env(db, sqlite_synchronous=synchronous)
        log(f"nurture import {path.name} ({events} events) on {label}")
        started = time.perf_counter()
        process = subprocess.Popen(
            [NURTURE, "import", str(path), "--json"],
            env=env,
            cwd=db.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with RssSampler(process.pid) as rss:
            out, err = process.communicate()
        seconds = time.perf_counter() - started
        stored = db.count("events") if process.returncode == 0 else 0
    result = Result(
        "nurture import (JSONL)",
        label,
        events,
        seconds,
        rss.peak_mb,
        target=f"≥ {TARGET_EVENTS_PER_S:,} ev/s, < {TARGET_RSS_MB} MB (at 10M)",
        target_events_per_s=TARGET_EVENTS_PER_S,
        target_rss_mb=TARGET_RSS_MB,
        stored=stored,
    )
    if process.returncode != 0:
        result.notes.append(
            f"`nurture import` exited {process.returncode}: "
            f"{(err or out).decode(errors='replace')[-1500:]}"
        )
        return result
    report = orjson.loads(out.splitlines()[-1])
    result.notes.append(
        f"importer's own figures: {report['rows']} rows in {report['elapsedSeconds']}s "
        f"({report['rowsPerSecond']:,.0f} rows/s); accepted {report['accepted']}, "
        f"duplicates {report['duplicates']}, rejected {report['rejected']}"
    )
    result.notes.append(f"stored {stored} of {events}")
    if events < TARGET_AT_EVENTS:
        result.notes.append(
            f"run at {events:,} events; the target is stated for {TARGET_AT_EVENTS:,}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: one import run, printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.import_bench", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--gzip", action="store_true", help="import a .jsonl.gz file")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args(argv)
    result = run_import(
        args.backend, args.events, compressed=args.gzip, synchronous=args.synchronous
    )
    print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
