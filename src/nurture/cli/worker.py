"""`nurture worker`: keep segments current, run journeys and send messages, without HTTP."""

from __future__ import annotations

import signal
import threading

import typer

from nurture.analytics.rollups import RollupRunner
from nurture.background import BackgroundLoop
from nurture.cli.common import console, running
from nurture.journeys.runner import JourneyRunner
from nurture.messages.runner import DispatchRunner
from nurture.segments.runner import EvaluationRunner


def worker_command(
    segments: bool = typer.Option(
        True, "--segments/--no-segments", help="Keep segments, stages and scores current"
    ),
    journeys: bool = typer.Option(
        True, "--journeys/--no-journeys", help="Run journeys: triggers, due steps, schedules"
    ),
    dispatch: bool = typer.Option(
        True, "--dispatch/--no-dispatch", help="Send the outbox through the channels"
    ),
    rollups: bool = typer.Option(
        True, "--rollups/--no-rollups", help="Keep the journey report's rollups current"
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
        dispatcher = DispatchRunner(nurture.dispatcher) if dispatch else None
        if journeys:
            runtime = nurture.journey_runtime
            if dispatcher is not None:
                wake = dispatcher.notify
                runtime.on_steps.append(lambda _timing: wake())
            runners.append(JourneyRunner(runtime).start())
        if dispatcher is not None:
            runners.append(dispatcher.start())
        if rollups:
            rollup = RollupRunner(nurture.db, nurture.clock, poll_seconds=s.rollup_seconds)
            runners.append(rollup.start())
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        console.print(
            "working ("
            + ", ".join(
                k
                for k, on in (
                    ("segments", segments),
                    ("journeys", journeys),
                    ("dispatch", dispatch),
                    ("rollups", rollups),
                )
                if on
            )
            + "); Ctrl-C to stop"
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for runner in runners:
                runner.stop()
