"""The journey worker thread: consumes the inbox, runs due steps and makes scheduled
entries, woken by ingest commits and polling for timers that come due.

Any number of workers may run against one PostgreSQL database (in `nurture serve` or
`nurture worker` processes, on any machines); they share the work through row locks.
"""

from __future__ import annotations

import logging
import threading

from nurture.journeys import schedules
from nurture.journeys.runtime import JourneyRuntime

log = logging.getLogger("nurture.journeys")


class JourneyRunner:
    def __init__(
        self,
        runtime: JourneyRuntime,
        *,
        poll_seconds: float = 0.2,
        scan_seconds: float = 30.0,
    ) -> None:
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self.scan_seconds = scan_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_scan: float | None = None

    def notify(self) -> None:
        """New events may be in the inbox (called after each ingest commit)."""
        self._wake.set()

    def start(self) -> JourneyRunner:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nurture-journeys", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def round(self) -> int:
        """One round of every kind of work; returns how much was done."""
        done = self.runtime.process_inbox()
        done += self.runtime.run_due()
        clock = self.runtime.clock
        if self._last_scan is None or clock.monotonic() - self._last_scan >= self.scan_seconds:
            self._last_scan = clock.monotonic()
            done += schedules.scan(self.runtime)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.round():
                    pass
            except Exception:  # keep working: a bad round is logged and retried
                log.exception("journey round failed")
                self._stop.wait(self.poll_seconds)
            self._wake.wait(self.poll_seconds)
