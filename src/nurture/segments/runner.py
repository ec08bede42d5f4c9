"""The evaluator thread: evaluates queued contacts as soon as ingest commits them, and
re-evaluates everything on a schedule for conditions that change with time alone.

Any number of runners may run against one PostgreSQL database (`SKIP LOCKED` shares
the queue); a runner in another process than the ingest finds new work by polling.
"""

from __future__ import annotations

import logging

from nurture.background import BackgroundLoop
from nurture.segments.engine import Engine

log = logging.getLogger("nurture.segments")


class EvaluationRunner(BackgroundLoop):
    name = "nurture-evaluate"

    def __init__(
        self,
        engine: Engine,
        *,
        refresh_seconds: float,
        poll_seconds: float = 0.5,
        batch: int = 500,
    ) -> None:
        super().__init__(poll_seconds=poll_seconds, log=log)
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self.batch = batch
        self._last_refresh: float | None = None

    def round(self) -> int:
        """Evaluate a batch of queued contacts; when none is left, the scheduled run if
        it is due (which counts as no work, so the loop then waits)."""
        done = self.engine.evaluate_pending(self.batch)
        if done:
            return done
        clock = self.engine.clock
        due = self._last_refresh is None or (
            clock.monotonic() - self._last_refresh >= self.refresh_seconds
        )
        if self.refresh_seconds > 0 and due and not self.stopping:
            self._last_refresh = clock.monotonic()
            self.engine.evaluate_all()
        return 0
