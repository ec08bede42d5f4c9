"""`nurture worker`: keep segments current and run journeys, without HTTP."""

from __future__ import annotations

import signal
import threading

import typer

from nurture.background import BackgroundLoop
from nurture.cli.common import console, running
from nurture.journeys.runner import JourneyRunner
from nurture.segments.runner import EvaluationRunner


def worker_command(
    segments: bool = typer.Option(
        True, "--segments/--no-segments", help="Keep segments, stages and scores current"
    ),
    journeys: bool = typer.Option(
        True, "--journeys/--no-journeys", help="Run journeys: triggers, due steps, schedules"
    ),
) -> None:
    """Work until interrupted (SIGTERM or Ctrl-C): any number of workers may run against
    one PostgreSQL database; on SQLite run one."""
    with running() as nurture:
        s = nurture.settings
        runners: list[BackgroundLoop] = []
        if segments:
            runners.append(
                EvaluationRunner(
                    nurture.engine,
                    refresh_seconds=s.evaluation_refresh_seconds,
                    batch=s.evaluation_batch,
                ).start()
            )
        if journeys:
            runners.append(JourneyRunner(nurture.journey_runtime).start())
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        console.print(
            "working ("
            + ", ".join(k for k, on in (("segments", segments), ("journeys", journeys)) if on)
            + "); Ctrl-C to stop"
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for runner in runners:
                runner.stop()
