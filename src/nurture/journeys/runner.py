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

    def round(self) -> int:
        """One round of every kind of work; returns how much was done."""
        done = self.runtime.process_inbox()
        done += self.runtime.run_due()
        clock = self.runtime.clock
        if self._last_scan is None or clock.monotonic() - self._last_scan >= self.scan_seconds:
            self._last_scan = clock.monotonic()
            done += schedules.scan(self.runtime)
        return done
