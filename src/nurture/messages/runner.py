"""The dispatch worker thread: sends due outbox messages, woken when journeys write some,
polling for messages held until later (quiet hours, caps, retries).

Any number of dispatchers may run against one PostgreSQL database; they share the outbox
through row locks. Each keeps its own provider throttles, so a provider's configured rate
is per dispatcher.
"""

from __future__ import annotations

import logging

from nurture.background import BackgroundLoop
from nurture.messages.dispatch import Dispatcher

log = logging.getLogger("nurture.dispatch")


class DispatchRunner(BackgroundLoop):
    name = "nurture-dispatch"

    def __init__(self, dispatcher: Dispatcher, *, poll_seconds: float = 0.2) -> None:
        super().__init__(poll_seconds=poll_seconds, log=log)
        self.dispatcher = dispatcher

    def round(self) -> int:
        """Claims work until a round finds none; a round held back only by a provider's
        rate counts as none, so the loop waits for the poll instead of spinning."""
        report = self.dispatcher.run_due()
        return report.handled - report.released
