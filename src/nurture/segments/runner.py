"""The evaluator thread: evaluates queued contacts as soon as ingest commits them, and
re-evaluates everything on a schedule for conditions that change with time alone.

Any number of runners may run against one PostgreSQL database (`SKIP LOCKED` shares
the queue); a runner in another process than the ingest finds new work by polling.
"""

from __future__ import annotations

import logging
import threading

from nurture.segments.engine import Engine

log = logging.getLogger("nurture.segments")


class EvaluationRunner:
    def __init__(
        self,
        engine: Engine,
        *,
        refresh_seconds: float,
        poll_seconds: float = 0.5,
        batch: int = 500,
    ) -> None:
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh: float | None = None

    def notify(self) -> None:
        """New work may be queued (called after each ingest commit)."""
        self._wake.set()

    def start(self) -> EvaluationRunner:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nurture-evaluate", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        clock = self.engine.clock
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.engine.evaluate_pending(self.batch):
                    pass
                due = self._last_refresh is None or (
                    clock.monotonic() - self._last_refresh >= self.refresh_seconds
                )
                if self.refresh_seconds > 0 and due and not self._stop.is_set():
                    self._last_refresh = clock.monotonic()
                    self.engine.evaluate_all()
            except Exception:  # keep evaluating: a bad round is logged and retried
                log.exception("evaluation round failed")
                self._stop.wait(self.poll_seconds)
            self._wake.wait(self.poll_seconds)
