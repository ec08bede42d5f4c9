"""The journey worker thread: consumes the inbox, runs due steps and makes scheduled
entries, woken by ingest and evaluation commits, polling for timers that come due.

Any number of workers may run against one PostgreSQL database (in `nurture serve` or
`nurture worker` processes, on any machines); they share the work through row locks.
"""

from __future__ import annotations

import logging

from nurture.background import BackgroundLoop
from nurture.journeys import schedules
from nurture.journeys.runtime import JourneyRuntime

log = logging.getLogger("nurture.journeys")


class JourneyRunner(BackgroundLoop):
    name = "nurture-journeys"

    def __init__(
        self,
        runtime: JourneyRuntime,
        *,
        poll_seconds: float = 0.2,
        scan_seconds: float = 30.0,
    ) -> None:
        super().__init__(poll_seconds=poll_seconds, log=log)
        self.runtime = runtime
        self.scan_seconds = scan_seconds
        self._last_scan: float | None = None
        self._last_due: float | None = None
        self._due_found = False

    def round(self) -> int:
        """One round of every kind of work; returns how much was done."""
        done = self.runtime.process_inbox()
        clock = self.runtime.clock
        # While events stream in, rounds follow each other every few milliseconds, and
        # their first steps run in the inbox's own transaction: a claim of due steps in
        # each round would mostly find none (and cost more than the round's events on
        # PostgreSQL). Then due steps are claimed every `poll_seconds`, well within the
        # lateness allowed to timers; at once when the inbox is idle or the last claim
        # found steps.
        if (
            not done
            or self._due_found
            or self._last_due is None
            or clock.monotonic() - self._last_due >= self.poll_seconds
        ):
            self._last_due = clock.monotonic()
            ran = self.runtime.run_due()
            self._due_found = ran > 0
            done += ran
        if self._last_scan is None or clock.monotonic() - self._last_scan >= self.scan_seconds:
            self._last_scan = clock.monotonic()
            done += schedules.scan(self.runtime)
        return done
